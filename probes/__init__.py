"""Probes: small scored tests sent to a llama-server to measure a (re-layered) model.

A probe is data plus a named scorer; built-in probes are files in probes/data/ loaded by the same
code as a user's custom probe file. Manual (probe file schema, scorers, request modes, built-in
items): docs/probes.md.
"""

from .client import AnswerLogprob, LlamaClient, RequestError
from .loader import (
    Item,
    Probe,
    ProbeError,
    Settings,
    SuiteEntry,
    builtin_names,
    default_suite,
    get_probe,
    list_probes,
    load_probe,
    parse_suite,
)
from .runner import (
    ItemResult,
    ProbeJob,
    ProbeResult,
    aggregate,
    allocate_streams,
    item_costs,
    measured_costs,
    next_probe,
    run_jobs,
    chat_messages,
    completion_prompt,
    has_chat_template,
    logprob_base,
    logprob_prompts,
    answer_text,
    paired_delta,
    run_probe,
    run_suite,
)
from .scorers import SCORERS

__all__ = [
    "AnswerLogprob",
    "LlamaClient",
    "Item",
    "ItemResult",
    "Probe",
    "ProbeJob",
    "ProbeError",
    "ProbeResult",
    "RequestError",
    "SCORERS",
    "Settings",
    "SuiteEntry",
    "aggregate",
    "allocate_streams",
    "builtin_names",
    "chat_messages",
    "completion_prompt",
    "default_suite",
    "get_probe",
    "has_chat_template",
    "logprob_base",
    "logprob_prompts",
    "answer_text",
    "item_costs",
    "list_probes",
    "load_probe",
    "measured_costs",
    "next_probe",
    "paired_delta",
    "parse_suite",
    "run_jobs",
    "run_probe",
    "run_suite",
]
