"""bench.tasks: its arguments, inputs and ratios, and its in-process modes on the cheapest task
(spaCy ner, loaded in about a second). Figures are not asserted: numbers come from the bench."""

from __future__ import annotations

import pytest

from bench.tasks import (
    INPUTS,
    chosen_tasks,
    distinct,
    in_process,
    parse_args,
    pipeline_ok,
    ratios,
    spread,
)


def test_ratios_are_batched_over_single_and_pipeline_over_batched() -> None:
    assert ratios({"single": 10.0, "batched": 50.0, "pipeline": 40.0}) == {
        "batched_vs_single": 5.0,
        "pipeline_vs_batched": 0.8,
        "pipeline_vs_single": 4.0,
    }


def test_a_ratio_of_a_mode_that_did_not_run_is_none() -> None:
    assert ratios({"single": 10.0, "batched": 50.0})["pipeline_vs_batched"] is None


def test_tasks_and_modes_are_comma_separated() -> None:
    args = parse_args(["--tasks", "ner, langid", "--modes", "single,batched", "--n", "5"])
    assert (args.tasks, args.modes, args.n) == (["ner", "langid"], ["single", "batched"], 5)


def test_every_task_and_mode_by_default() -> None:
    args = parse_args([])
    assert args.tasks is None and args.modes == ["single", "batched", "pipeline"]


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--modes", "single,warp"])


def test_unknown_tasks_and_tasks_without_inputs_are_skipped_with_the_reason() -> None:
    names, skipped = chosen_tasks(["ner", "nope", "custom"], ["sentiment", "ner", "custom"])
    assert names == ["ner"]
    assert skipped == {
        "nope": "not a task of the registry",
        "custom": "no benchmark inputs for this task",
    }


def test_inputs_are_distinct_after_normalisation() -> None:
    assert distinct(["a  b", "a b", " a b\t", "c", ""]) == ["a  b", "c"]


def test_spread_takes_evenly_spaced_texts_or_all_of_them() -> None:
    texts = [str(i) for i in range(10)]
    assert spread(texts, 5) == ["0", "2", "4", "6", "8"]
    assert spread(texts, 20) == texts


def test_every_task_input_file_reads_distinct_texts() -> None:
    for task in ("sentiment", "embed", "ner", "langid"):
        texts = distinct(INPUTS[task]())
        assert len(texts) > 100, task


def test_a_pipeline_with_a_cached_or_missing_result_is_not_ok() -> None:
    run = {"n": 3, "results": 3, "cached": 0, "complete": True}
    assert pipeline_ok({"pipeline": run}) and pipeline_ok({})
    assert not pipeline_ok({"pipeline": {**run, "cached": 1}})
    assert not pipeline_ok({"pipeline": {**run, "results": 2}})


def test_ner_single_and_batched_answer_every_input() -> None:
    texts = spread(distinct(INPUTS["ner"]()), 6)
    args = parse_args(["--modes", "single,batched", "--n-single", "3", "--batch", "4"])
    figures = in_process("ner", texts, args)
    assert figures["adapter"] == "core.inference.ner:SpacyEntities"
    assert (figures["single"]["n"], figures["batched"]["n"]) == (3, 6)
    assert figures["batched"]["batch"] == 4 and "pipeline" not in figures
