"""Errors of the annotator's judge logic.

``RatingParseError`` is permanent for the message at hand (the same reply never parses), but its
text is written to be quoted back to the judge in a repair prompt, so it names the answer, the
aspect and what was found.
"""

from shared.errors import PermanentError, VlfError


class RatingParseError(PermanentError):
    """A judge reply does not hold exactly one valid 1-5 rating per answer and aspect."""


class PromptTemplateError(VlfError):
    """A user-supplied prompt template cannot be used (unknown placeholder, missing value).

    Raised while loading settings or rendering, so it is a configuration bug: the process should
    stop loudly rather than dead-letter every message.
    """


class TemplateAnswerCountError(PermanentError):
    """A numbered-answer template (``{answer_1}``.. without ``{answers}``) shows another number of
    answers than this instruction has (fewer arrived before the gather timeout, or more were
    sampled): the judge would rate slots that are empty or never see some answers. Permanent for
    this instruction only; the template is fine for the others."""


class ReplyPending(VlfError):
    """A judge reply is waiting for the provider's Batch API: the instruction is rated when the
    batch's results come in (the request is kept in the ledger), so this is neither a failure to
    retry nor one to dead-letter."""
