"""lit_chord: CHORD (arXiv 2508.11408) — SFT on expert demonstrations as a dynamically weighted term inside
on-policy GRPO — on PyTorch Lightning, with vLLM rollouts."""

__version__ = "0.1.0"

__all__ = ["ChordDataModule", "ChordModule", "RolloutCallback", "__version__"]


def __getattr__(name: str):
    # Lazy: `import lit_chord` stays cheap and never imports Lightning, transformers or vLLM by itself.
    if name == "ChordModule":
        from lit_chord.module import ChordModule

        return ChordModule
    if name == "ChordDataModule":
        from lit_chord.datamodule import ChordDataModule

        return ChordDataModule
    if name == "RolloutCallback":
        from lit_chord.rollout_callback import RolloutCallback

        return RolloutCallback
    raise AttributeError(name)
