"""``PolicyScorer``: the policy as a function from token ids to next-token log-probabilities, never logits.

It exists for FSDP2: sharded last, it is the root whose forward gathers the root parameters (embeddings, final
norm, the LM head tied to them) around the chunked projection of ``lit_chord.logprobs``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from lit_chord.logprobs import token_logprobs
from lit_chord.packing import PackedRows

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class PolicyScorer(nn.Module):
    """A causal LM whose forward returns the log-probabilities (and entropies) of the next tokens, never logits.

    Under FSDP2 this wrapper is the root that is sharded last, so its forward is where the root's parameters
    (embeddings, final norm, the LM head tied to them) are gathered for the chunked projection.
    """

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        self.lm = lm

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        temperature: float,
        chunk_size: int,
        with_entropy: bool,
        padding_free: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Shapes: ``(B, T)`` right-padded in, ``(B, T - 1)`` out: position t scores ``input_ids[:, t + 1]``.

        ``padding_free``: the forward runs on the rows' real tokens packed into one row (``PackedRows``); the
        scores are the padded path's where ``input_ids[:, t + 1]`` is real, and 0 where it is padding."""
        decoder, weight = self.lm.get_decoder(), self.lm.get_output_embeddings().weight
        if not padding_free:
            hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return token_logprobs(hidden[:, :-1], weight, input_ids[:, 1:], temperature, chunk_size, with_entropy)
        packed = PackedRows.of(input_ids, attention_mask)
        # No attention mask and no cache: only then does transformers read sequence boundaries from the positions
        # (with a cache, even an empty one, the packed row is one causal sequence and rows would attend across).
        out = decoder(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False)
        hidden, targets = out.last_hidden_state[:, :-1][:, packed.scored], packed.input_ids[:, 1:][:, packed.scored]
        logprobs, entropy = token_logprobs(hidden, weight, targets, temperature, chunk_size, with_entropy)
        return packed.unpack(logprobs), None if entropy is None else packed.unpack(entropy)


def shard_fsdp2(scorer: PolicyScorer, mesh) -> None:
    """FSDP2: one unit per decoder layer, then the root (embeddings, norm, head)."""
    from torch.distributed.fsdp import fully_shard

    for layer in scorer.lm.get_decoder().layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(scorer, mesh=mesh)
