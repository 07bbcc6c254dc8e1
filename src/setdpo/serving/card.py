"""The model card (`README.md`) of an export: provenance, training configuration, test
metrics when an evaluation of the run exists, the prompt template and how candidates are
scored."""

from __future__ import annotations

from typing import Any

import yaml

from setdpo.data import prompts
from setdpo.serving.info import ModelInfo

# Training fields worth a line in the card (the whole configuration follows in a block).
_KEY_FIELDS = ("model", "init", "data", "loss", "beta", "peft", "lora_r", "num_train_epochs",
               "max_steps", "learning_rate", "num_negatives", "negatives", "seed")  # fmt: skip


def model_card(
    info: ModelInfo,
    training: dict[str, Any],
    evaluations: list[dict[str, Any]],
    adapter_only: bool,
) -> str:
    """Markdown text of the card."""
    what = "LoRA adapter (apply it to the base model)" if adapter_only else "merged model"
    lines = [
        "---",
        "library_name: " + ("peft" if adapter_only else "transformers"),
        "tags: [setdpo, recommendation, preference-alignment]",
        "---",
        "",
        f"# setdpo recommender ({info.objective})",
        "",
        f"A {what} exported by `setdpo export` from the run `{info.run}`.",
        "",
        f"- base model: `{info.base_model}`",
        f"- objective: `{info.objective}`",
        f"- data: `{info.data}` (source `{info.source}`, mode `{info.mode}`)",
        f"- prompt: template `{info.template}`, domain `{info.domain}`"
        f", chat template {'on' if info.chat_template else 'off'}"
        f", max prompt length {info.max_prompt_length or 'none'}",
        "",
        "## Prompt",
        "",
        "Rendered from the history (titles, oldest first, joined by `, `) and, for the "
        "`listing` template, the candidates:",
        "",
        "```text",
        prompts.load_template(info.template, info.domain),
        "```",
        "",
        "## Scoring",
        "",
        "A candidate's score is its summed log-probability: the title's tokens as they follow "
        "the prompt in running text (after a space), then EOS, given the prompt "
        "(`s(y|x) = sum_t log p(y_t | x, y_<t)`). Candidates are ranked by it, highest first. "
        "`setdpo serve` and `setdpo evaluate` compute exactly this; any causal-LM runtime can "
        "by scoring `prompt + ' ' + title + eos` and summing the title's token log-probs.",
        "",
        *_metrics_section(evaluations),
        "## Training configuration",
        "",
        *[f"- `{k}`: `{training[k]}`" for k in _KEY_FIELDS if k in training],
        "",
        "<details><summary>resolved_config.yaml</summary>",
        "",
        "```yaml",
        yaml.safe_dump(training, sort_keys=True).rstrip() if training else "# (none recorded)",
        "```",
        "",
        "</details>",
        "",
    ]
    return "\n".join(lines)


def _metrics_section(evaluations: list[dict[str, Any]]) -> list[str]:
    if not evaluations:
        return ["## Test metrics", "", "No evaluation of this run was found.", ""]
    lines = ["## Test metrics", ""]
    for found in evaluations:
        p = found["protocol"]
        lines += [
            f"`{found['file']}`: split `{p.get('split')}`, {p.get('n_contexts')} contexts, "
            f"{p.get('candidates_per_context')} candidates; 95% bootstrap intervals.",
            "",
            "| metric | value | interval |",
            "|---|---|---|",
        ]
        for name, iv in found["metrics"].items():
            lines.append(f"| {name} | {iv['value']:.4f} | [{iv['low']:.4f}, {iv['high']:.4f}] |")
        lines.append("")
    return lines
