"""lit_chord: CHORD (arXiv 2508.11408) — SFT on expert demonstrations as a dynamically weighted term inside
on-policy GRPO — on PyTorch Lightning, with vLLM rollouts.

Rooms, each importing only the ones below it (no import cycle, lazy imports included: checked by
``../shared/tools/import_cycles.py``):

- ``experiments/``: the demo and miniature worlds, the comparison suites and their plots (``python -m
  lit_chord.experiments.compare``). At the top: it imports the library, and nothing in the library imports it.
- ``__main__``, ``cli``, ``cli_parser``, ``runs``, ``data/`` (``python -m lit_chord.data``): the command lines;
  ``hub`` (is a hub name there, cheaply) beneath them.
- callbacks: ``rollout_callback`` (engines in ``engines/``, ``rewards``, ``protocol``), ``export``, ``samples``,
  ``summary``, ``progress``, ``interrupt``.
- ``module`` (the step; its other jobs in ``policy`` (``scorer``/``logprobs``, ``lora``), ``optimization``
  (``schedules``), ``packing``, ``metrics`` (``flops``) and ``validation``, whose ``HeldOutScores`` owns the held-out
  state) and ``datamodule`` (``records``, ``chat``, ``held_out``).
- ``objectives/``: one file per algorithm (``grpo``, ``chord``, ``luffy``, ``sft``, ...), chosen by ``class_path``
  as ``model.objective``; each declares what the step needs (``Needs``) and composes its loss of ``loss``'s pure
  pieces. A new algorithm goes here; a new rollout engine in ``engines/``.
- ``batch``, ``loss`` and ``errors``: shared by all, importing nothing of ours above them.

One step: the datamodule yields the step's prompts and expert rows (``StepBatch``, what the objective ``needs``);
the rollout callback pushes the weights to the engine, samples and scores the groups, computes the advantages and
sets ``batch.train`` and ``batch.sampling``; the module counts the step's tokens over ranks, runs the objective's
loss pass by pass, and clips and steps through ``optimization``. ``../shared/DESIGN.md`` has the long version.
"""

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
