"""Keep prompt text out of the logs that third-party libraries write.

Diffusers' text encoders warn when a prompt is longer than the tokenizer's window and quote the part
they cut off ("The following part of your input was truncated because CLIP can only handle sequences
up to 77 tokens: [...]"): prompt text in the logs, private prompts included, whatever `log_prompts`
says. `PromptScrubber` rewrites such records to say how much was cut without quoting it.

It is installed through the log record factory rather than on loggers or handlers: diffusers and
transformers log to their own handlers (propagation off), an operator may route them anywhere, and a
filter on a parent logger does not see its children's records. The factory sees every record once, at
creation, before any handler.
"""

from __future__ import annotations

import logging
import re
import threading

_TRUNCATED = re.compile(r"(?s)^(The following part of your input was truncated because .*? tokens?):\s*(.*)$")
_MARKER = "part of your input was truncated"

_installed = False
_install_lock = threading.Lock()


class PromptScrubber(logging.Filter):
    """Rewrites tokenizer truncation warnings so that they no longer quote the cut-off prompt text."""

    def filter(self, record: logging.LogRecord) -> bool:
        scrub(record)
        return True


def scrub(record: logging.LogRecord) -> logging.LogRecord:
    """`record`, with the quoted text of a truncation warning replaced by its length."""
    args = record.args if isinstance(record.args, tuple) else ()
    if _MARKER not in str(record.msg) and not any(isinstance(arg, str) and _MARKER in arg for arg in args):
        return record
    try:
        message = record.getMessage()
    except Exception:  # a malformed record is logging's own problem; don't make it ours
        return record
    match = _TRUNCATED.match(message)
    if match is not None:
        record.msg = f"{match.group(1)} ([{len(match.group(2))} characters of prompt text not logged])"
    else:
        record.msg = "A prompt was truncated by the tokenizer (the text is not logged)"
    record.args = None
    return record


def install_prompt_scrubber() -> None:
    """Scrub every log record this process creates from now on (idempotent, thread-safe)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        make_record = logging.getLogRecordFactory()

        def scrubbed_record(*args, **kwargs) -> logging.LogRecord:
            return scrub(make_record(*args, **kwargs))

        logging.setLogRecordFactory(scrubbed_record)
        _installed = True
