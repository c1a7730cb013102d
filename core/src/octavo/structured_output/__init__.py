"""Structured outputs: a request's tokens constrained to a JSON schema, regex, choice or grammar.

The grammars come from xgrammar (the engine vLLM and SGLang use): `GrammarCache` compiles a
request's `StructuredOutputsParams` against the tokenizer once per distinct constraint, and
`StructuredOutputManager` keeps one matcher per request on the host. Each step:

1. the device runs the forward (logits);
2. meanwhile the host fills each constrained row's bitmask of allowed next tokens (with async
   scheduling, after it has fed the matchers the tokens of the step before, which it waits for
   there: see `LLMEngine._step_async`);
3. the platform's `FusedOps.apply_token_bitmask` bans the rest on the device, then sampling runs;
4. the sampled tokens are fed back to the matchers (`accept`); a grammar that has terminated
   ends its request, which stops as if on EOS.

Unconstrained rows in the same batch get a mask that allows everything. With a reasoning
parser, a request's grammar starts after the end-of-reasoning token (`</think>`).
"""

from octavo.structured_output.compiler import GrammarCache
from octavo.structured_output.manager import StructuredOutputManager

__all__ = ["GrammarCache", "StructuredOutputManager"]
