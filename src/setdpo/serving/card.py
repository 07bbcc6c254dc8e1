"""The model card (`README.md`) of an export: provenance, training configuration, test
metrics when an evaluation of the run exists, the prompt template and how candidates are
scored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from setdpo.data import prompts
from setdpo.model import embedded_hub_id
from setdpo.serving.info import ModelInfo


@dataclass(frozen=True)
class Weights:
    """What an export's weights are: merged or one adapter, the run's adapters
    ``(name, r, lora_alpha)`` in order, the base the export names and the one it trained on."""

    adapter_only: bool
    adapters: list[tuple[str, int, float]]
    base: str  # adapter_config.json's base_model_name_or_path, or the trained base's name
    trained_on: str  # the run's base model name (embedded:smollm2-135m, tiny, a hub id)


# Training fields worth a line in the card (the whole configuration follows in a block).
_KEY_FIELDS = ("model", "init", "data", "loss", "beta", "peft", "lora_r", "num_train_epochs",
               "max_steps", "learning_rate", "num_negatives", "negatives", "seed")  # fmt: skip


def model_card(
    info: ModelInfo,
    training: dict[str, Any],
    evaluations: list[dict[str, Any]],
    weights: Weights,
) -> str:
    """Markdown text of the card (``info`` and ``training`` without local paths)."""
    adapter_only = weights.adapter_only
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
        f"- base model: {_base_line(weights)}",
        f"- objective: `{info.objective}`",
        f"- data: `{info.data}` (source `{info.source}`, mode `{info.mode}`)",
        f"- prompt: template `{info.template}`, domain `{info.domain}`"
        f", chat template {'on' if info.chat_template else 'off'}"
        f", max prompt length {info.max_prompt_length or 'none'}",
        "",
        *_weights_section(weights),
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


def _base_line(weights: Weights) -> str:
    hub_id = embedded_hub_id(weights.trained_on)
    if hub_id is None:
        return f"`{weights.base}`"
    return (
        f"`{hub_id}` (trained on setdpo's `{weights.trained_on}`: that model's Q4_1 GGUF "
        "dequantized to float32, so on the hub's own weights scores differ slightly from the "
        "run's)"
    )


def _weights_section(weights: Weights) -> list[str]:
    """How the exported weights came about: each adapter's rank and alpha, and the exported
    adapter's (the training configuration's ``lora_r`` is one adapter's rank)."""
    lines = ["## Weights", ""]
    each = ", ".join(f"`{name}` (r {r}, alpha {alpha:g})" for name, r, alpha in weights.adapters)
    if not weights.adapters:
        return [*lines, "The whole model was trained and is exported as it is (no adapter).", ""]
    if not weights.adapter_only:
        return [*lines, f"The run's LoRA adapters {each} are merged into the weights.", ""]
    rank = sum(r for _, r, _ in weights.adapters)
    lines.append(f"One LoRA adapter of rank {rank} and alpha {rank} (scaling 1).")
    if len(weights.adapters) > 1:
        lines[-1] += (
            f" It combines the run's adapters {each}, applied in that order during training: "
            "they are concatenated, `A = [A1; A2]`, `B = [s1 B1, s2 B2]` with `s_i = alpha_i / "
            "r_i`, which adds exactly what applying them in turn adds to each weight."
        )
    lines += ["", *_base_howto(weights), ""]
    return lines


def _base_howto(weights: Weights) -> list[str]:
    if weights.base == "base":
        return [
            "The base model is the folder `base/` beside the adapter: load it with "
            "`AutoModelForCausalLM.from_pretrained(DIR + '/base')`, then "
            "`PeftModel.from_pretrained(model, DIR)`."
        ]
    hub_id = embedded_hub_id(weights.trained_on)
    text = (
        f"`adapter_config.json` names the base `{weights.base}`. Without internet: on a "
        f"connected machine `huggingface-cli download {weights.base}`, copy the Hugging Face "
        "cache (`~/.cache/huggingface/hub`) across and set `HF_HUB_OFFLINE=1`; or set "
        "`base_model_name_or_path` to a local folder of that model."
    )
    if hub_id is not None:
        text += (
            " For exactly the run's scores use setdpo's own copy: `pip install setdpo`, then "
            "`python -c 'from setdpo.model import embedded_model_folder as f; print(f()[0])'` "
            "prints its folder (`setdpo serve DIR` uses it by itself)."
        )
    return [text]
