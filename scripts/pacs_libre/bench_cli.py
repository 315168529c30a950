"""``pacsctl bench``: ingest, converge, view, search, retrieve, restore, forward; each beside its
baseline.

Why one module of about 720 lines: every bench command is a thin Typer front (options,
a progress bar, a table) over its own module (bench, bench_converge, bench_view,
bench_search, bench_retrieve, bench_restore, bench_forward), and the project keeps one
CLI module per command group.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from pacs_libre import (
    bench,
    bench_converge,
    bench_forward,
    bench_restore,
    bench_retrieve,
    bench_search,
    bench_view,
    lab,
)
from pacs_libre.cli_options import (
    AET_OPT,
    CALLING_OPT,
    FORMAT_OPT,
    INVENTORY_OPT,
    TARGET_OPT,
    TableOrJson,
)
from pacs_libre.dicom import net
from pacs_libre.dicom.synth import StudyManifest
from pacs_libre.dicom.target import Target, resolve_target
from pacs_libre.errors import UserError

app = typer.Typer(
    help="Benchmarks, side by side with a stock baseline (never part of make test).",
    no_args_is_help=True,
)
console = Console(stderr=True)
# Wide enough for the results table when the output is a file or a pipe.
out = Console(width=None if sys.stdout.isatty() else 160)


def _progress() -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=True,
    )


@app.command("ingest")
def ingest_cmd(
    *,
    associations: int = typer.Option(4, "--associations", "-n", help="Parallel associations."),
    instances: int = typer.Option(1000, "--instances", "-m", help="CT instances (512x512)."),
    target: str | None = TARGET_OPT,
    aet: str | None = AET_OPT,
    calling_aet: str | None = CALLING_OPT,
    inventory: Path = INVENTORY_OPT,
    baseline: bool = typer.Option(
        False, "--baseline", help="Also measure a stock Orthanc on an identical lab host."
    ),
    debian: str = typer.Option(
        lab.DEFAULT_DEBIAN, "--debian", help="Debian release of the stock host (13 or 12)."
    ),
    sender: str = typer.Option(
        "dcmtk",
        "--sender",
        help="dcmtk: storescu processes (fast, the default); python: pynetdicom processes.",
    ),
    size: int = typer.Option(512, "--size", help="CT matrix (rows = columns).", hidden=True),
    cache: Path | None = typer.Option(
        None, "--cache", help="Where the instance pool lives (default: the pacs-libre cache)."
    ),
    fmt: TableOrJson = FORMAT_OPT,
) -> None:
    """Sustained C-STORE ingest: images/s and MB/s over N parallel associations."""
    if associations < 1 or associations > 64:
        raise UserError(f"--associations {associations}: use 1 to 64")
    if instances < 1:
        raise UserError(f"--instances {instances}: use 1 or more")
    if size < 16 or size > 4096:
        raise UserError(f"--size {size}: use 16 to 4096")
    lab.ImageRecipe.for_debian(debian)  # a bad --debian fails before any work
    if sender not in bench.SENDERS:
        raise UserError(f"--sender {sender}: use one of {', '.join(bench.SENDERS)}")
    where = resolve_target(target, aet, calling_aet, inventory)
    pool_cache = cache or lab.cache_dir() / "bench"
    with _progress() as bar:
        task = bar.add_task("instance pool", total=instances)
        pool = bench.ct_pool(
            instances,
            pool_cache,
            size=size,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    first = "pacs-libre" if baseline else "target"
    runs = [
        _one_run(
            first,
            where,
            pool=pool,
            pool_cache=pool_cache,
            associations=associations,
            sender=sender,
        )
    ]
    if baseline:
        with console.status("[bold]stock Orthanc host[/]") as spinner:
            host, port, stock_aet = bench.ensure_stock(
                debian, progress=lambda m: spinner.update(f"[bold]stock:[/] {m}")
            )
        stock = Target(host, port, stock_aet, where.calling_aet)
        runs.append(
            _one_run(
                "stock",
                stock,
                pool=pool,
                pool_cache=pool_cache,
                associations=associations,
                container=bench.STOCK_CONTAINER,
                sender=sender,
            )
        )
        runs[-1].server["orthanc_version"] = bench.stock_version()
    ratio = (
        runs[0].images_per_s / runs[1].images_per_s
        if baseline and runs[1].images_per_s > 0
        else None
    )
    data: dict[str, Any] = {
        "command": "pacsctl " + " ".join(sys.argv[1:]) if sys.argv else "",
        "runs": [r.as_dict() for r in runs],
        "ratio": None if ratio is None else round(ratio, 2),
    }
    if fmt == "json":
        typer.echo(json.dumps(data, indent=2))
    else:
        _table(runs, ratio)
    if any(r.failed for r in runs):
        raise typer.Exit(1)


def _one_run(
    label: str,
    where: Target,
    *,
    pool: list[Path],
    pool_cache: Path,
    associations: int,
    container: str | None = None,
    sender: str = "dcmtk",
) -> bench.IngestResult:
    counters = None
    name = container or (
        bench.container_for_port(where.port) if where.host in {"127.0.0.1", "localhost"} else None
    )
    if name:
        try:
            counters = bench.ServerCounters(name)
        except UserError:
            counters = None  # not an Orthanc host: measure the client side only
    with bench.run_files(pool, pool_cache) as files, _progress() as bar:
        task = bar.add_task(f"{label}: C-STORE", total=len(files))
        return bench.run_ingest(
            files,
            where.host,
            where.port,
            where.aet,
            where.calling_aet,
            associations=associations,
            label=label,
            progress=lambda n: bar.advance(task, n),
            counters=counters,
            sender=sender,
        )


def _table(runs: list[bench.IngestResult], ratio: float | None) -> None:
    table = Table(title="C-STORE ingest")
    for column in (
        "run",
        "target",
        "assoc.",
        "stored",
        "failed",
        "seconds",
        "images/s",
        "MB/s",
        "archive CPU",
        "machine user/sys/iowait/idle %",
    ):
        table.add_column(column, justify="right" if column not in {"run", "target"} else "left")
    for r in runs:
        cpu = r.server.get("machine_cpu_percent") or {}
        split = "/".join(str(cpu.get(k, "-")) for k in ("user", "system", "iowait", "idle"))
        archive = r.server.get("archive_cpu_percent")
        table.add_row(
            r.label,
            r.target,
            str(r.associations),
            str(r.sent),
            str(r.failed),
            f"{r.seconds:.2f}",
            f"{r.images_per_s:.0f}",
            f"{r.mb_per_s:.1f}",
            "-" if archive is None else f"{archive:.0f} %",
            split if cpu else "-",
        )
    out.print(table)
    for r in runs:
        for error in r.errors:
            out.print(f"[red]{r.label}[/]: {error}", markup=True)
    if ratio is not None:
        out.print(f"pacs-libre / stock: [bold]{ratio:.2f}x[/] images/s")


@app.command("stock")
def stock_cmd(
    *,
    debian: str = typer.Option(lab.DEFAULT_DEBIAN, "--debian", help="13 or 12."),
    fmt: TableOrJson = FORMAT_OPT,
) -> None:
    """Start (or reuse) the stock Orthanc host alone and print its DICOM endpoint."""
    lab.ImageRecipe.for_debian(debian)
    with console.status("[bold]stock Orthanc host[/]") as spinner:
        host, port, aet = bench.ensure_stock(
            debian, progress=lambda m: spinner.update(f"[bold]stock:[/] {m}")
        )
    data = {
        "container": bench.STOCK_CONTAINER,
        "host": host,
        "port": port,
        "aet": aet,
        "orthanc_version": bench.stock_version(),
    }
    if fmt == "json":
        typer.echo(json.dumps(data, indent=2))
    else:
        out.print(
            f"{bench.STOCK_CONTAINER}: Orthanc {data['orthanc_version']} at "
            f"{host}:{port}, AE title {aet} — `pacsctl bench ingest --target {host}:{port} "
            f"--aet {aet} --calling-aet {bench.CALLING_AET}`"
        )


@app.command("converge")
def converge_cmd(
    *,
    inventory: Path = INVENTORY_OPT,
    playbook: Path = typer.Option(
        Path("playbooks/site.yml"), "--playbook", help="Playbook to rerun."
    ),
    runs: int = typer.Option(3, "--runs", min=1, max=20, help="Runs of each path, in turn."),
) -> None:
    """Time a changed=0 rerun over the podman connection, SSH, and SSH with Mitogen, in turn."""
    root = lab.project_root()
    inv = inventory if inventory.exists() else root / inventory
    play = playbook if playbook.exists() else root / playbook
    with console.status("[bold]converge benchmark[/]") as spinner:
        timings = bench_converge.compare(
            inv.resolve(), play.resolve(), runs, progress=spinner.update
        )
    base = timings[0]
    table = Table(title=f"{play.name} rerun (changed=0) on {inv}, {runs} run(s) of each, in turn")
    for column in ("path", "tasks", "median s", "min s", "max s", f"{base.path} / path"):
        table.add_column(column)
    for timing in timings:
        table.add_row(
            timing.path,
            str(timing.tasks),
            f"{timing.median:.1f}",
            f"{min(timing.seconds):.1f}",
            f"{max(timing.seconds):.1f}",
            f"{base.median / timing.median:.2f}x",
        )
    out.print(table)


def _stored_ct(slices: int, where: Target) -> StudyManifest:
    """The benchmarks' CT (made once, kept in the cache), C-STOREd whole to ``where``."""
    with _progress() as bar:
        task = bar.add_task(f"CT of {slices} slices", total=slices)
        study = bench_view.view_study(
            slices,
            lab.cache_dir() / "bench",
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    with _progress() as bar:
        task = bar.add_task(f"C-STORE to {where.aet}", total=len(study.paths))
        report = net.send(
            study.paths,
            where.host,
            where.port,
            where.aet,
            where.calling_aet,
            progress=lambda _r: bar.advance(task),
        )
    if report.failed:
        raise UserError(
            f"{len(report.failed)} of {len(study.paths)} instances were not stored in {where}"
        )
    return study


@app.command("view")
def view_cmd(
    *,
    inventory: Path = INVENTORY_OPT,
    slices: int = typer.Option(300, "--slices", min=1, max=2000, help="CT slices (512x512)."),
    runs: int = typer.Option(3, "--runs", min=1, max=20, help="Runs of each measure."),
    screenshots: Path | None = typer.Option(
        None, "--screenshots", help="Keep a screenshot of each OHIF run in this folder."
    ),
    fmt: TableOrJson = FORMAT_OPT,
) -> None:
    """OHIF's time to first image and to the whole CT, and WADO-RS through the gateway vs direct."""
    inv = inventory if inventory.exists() else lab.project_root() / inventory
    the_lab = lab.load_lab(inv)
    web = bench_view.web_endpoint(the_lab)
    where = resolve_target(None, None, None, inv)
    study = _stored_ct(slices, where)
    uid = study.study_instance_uid
    path = f"/dicom-web/studies/{uid}"
    with console.status("[bold]WADO-RS[/]") as spinner:
        retrievals = bench_view.wado_throughput(
            web.ssh,
            [
                {
                    "label": "gateway",
                    "url": f"https://127.0.0.1{path}",
                    "auth": f"{web.user}:{web.password}",
                },
                {"label": "direct", "url": f"http://127.0.0.1:8042{path}", "auth": "@orthanc"},
            ],
            runs=runs,
            cafile="/etc/pacs-libre/pki/ca.crt",
            progress=spinner.update,
        )
    with console.status("[bold]OHIF in Chromium[/]") as spinner:
        views = bench_view.ohif_runs(
            web.url,
            uid,
            user=web.user,
            password=web.password,
            expected_frames=slices,
            runs=runs,
            screenshot_dir=screenshots,
            progress=spinner.update,
        )
    gateway, direct = retrievals
    ratio = gateway.mb_per_s / direct.mb_per_s if direct.mb_per_s else None
    data: dict[str, Any] = {
        "command": "pacsctl " + " ".join(sys.argv[1:]) if sys.argv else "",
        "study": {"uid": uid, "slices": slices, "bytes": gateway.bytes},
        "wado_rs": [
            {"path": r.label, "url": r.url, "mb_per_s": round(r.mb_per_s, 1), "seconds": r.seconds}
            for r in retrievals
        ],
        "gateway_over_direct": None if ratio is None else round(ratio, 3),
        "ohif": views.as_dict(),
    }
    if fmt == "json":
        typer.echo(json.dumps(data, indent=2))
        return
    table = Table(
        title=f"WADO-RS of one {slices}-slice CT ({gateway.bytes / 1e6:.0f} MB), "
        "from the archive host"
    )
    for column in ("path", "median MB/s", "runs (s)"):
        table.add_column(column)
    for r in retrievals:
        table.add_row(r.label, f"{r.mb_per_s:.0f}", " ".join(f"{s:.2f}" for s in r.seconds))
    out.print(table)
    if ratio is not None:
        out.print(f"gateway / direct: [bold]{ratio:.2f}x[/] ({(1 - ratio) * 100:.0f} % cost)")
    summary = views.as_dict()
    first, whole = summary["first_image_median_s"], summary["all_frames_median_s"]
    out.print(
        f"OHIF through /iid, {runs} fresh browser(s): first image "
        f"[bold]{'-' if first is None else f'{first:.2f} s'}[/] (median), whole series "
        f"[bold]{'-' if whole is None else f'{whole:.2f} s'}[/] "
        f"({views.frames}/{slices} frames)"
    )


@app.command("search")
def search_cmd(
    *,
    studies: int = typer.Option(
        20000, "--studies", "-N", min=1, max=1_000_000, help="Studies in the corpus."
    ),
    seed: int = typer.Option(1, "--seed", help="The corpus's seed (the same seed, the same data)."),
    runs: int = typer.Option(20, "--runs", min=2, max=500, help="Measured runs of each query."),
    associations: int = typer.Option(
        8, "--associations", "-n", min=1, max=64, help="Parallel associations while loading."
    ),
    baseline: bool = typer.Option(
        True, "--baseline/--no-baseline", help="Also load and measure a stock Orthanc."
    ),
    load_only: bool = typer.Option(False, "--load-only", help="Load the corpus, measure nothing."),
    target: str | None = TARGET_OPT,
    aet: str | None = AET_OPT,
    calling_aet: str | None = CALLING_OPT,
    inventory: Path = INVENTORY_OPT,
    debian: str = typer.Option(
        lab.DEFAULT_DEBIAN, "--debian", help="Debian release of the stock host (13 or 12)."
    ),
    cache: Path | None = typer.Option(
        None, "--cache", help="Where the corpus lives (default: the pacs-libre cache)."
    ),
    fmt: TableOrJson = FORMAT_OPT,
) -> None:
    """Load N studies (kept, resumable), then p50/p95 of OHIF, IID and workstation queries."""
    lab.ImageRecipe.for_debian(debian)
    where = resolve_target(target, aet, calling_aet, inventory)
    archives = [bench_search.lab_archive(where, None)]
    if baseline:
        with console.status("[bold]stock Orthanc host[/]") as spinner:
            archives.append(
                bench_search.stock_archive(
                    debian, progress=lambda m: spinner.update(f"[bold]stock:[/] {m}")
                )
            )
    folder = (cache or lab.cache_dir() / "bench").resolve()
    corpus = bench_search.open_corpus(studies, seed, folder)
    loads = []
    for archive in archives:
        with _progress() as bar:
            task = bar.add_task(f"{archive.label}: load {studies} studies", total=None)

            def advance(done: int, total: int, bar: Progress = bar, task: TaskID = task) -> None:
                bar.update(task, completed=done, total=total)

            loads.append(
                bench_search.load(
                    corpus, folder, archive, associations=associations, progress=advance
                )
            )
    counts = {a.label: a.statistics() for a in archives}
    data: dict[str, Any] = {
        "command": "pacsctl " + " ".join(sys.argv[1:]) if sys.argv else "",
        "corpus": {"studies": studies, "seed": seed, "anchor": corpus.anchor.isoformat()},
        "load": [r.as_dict() for r in loads],
        "archives": counts,
    }
    timings: list[bench_search.Timing] = []
    if not load_only:
        catalogue = bench_search.queries(corpus, studies, runs)
        with console.status("[bold]queries[/]") as spinner:
            timings = bench_search.measure(archives, catalogue, progress=spinner.update)
        data["queries"] = bench_search.compare(timings)
    if fmt == "json":
        typer.echo(json.dumps(data, indent=2))
        return
    _load_table(loads, counts)
    if timings:
        _search_table(data["queries"], runs)


def _load_table(loads: list[bench_search.LoadReport], counts: dict[str, dict[str, int]]) -> None:
    table = Table(title="corpus load (this run)")
    for column in (
        "archive",
        "studies before",
        "studies loaded",
        "instances",
        "seconds",
        "instances/s",
        "studies/s",
        "studies / series / instances held",
    ):
        table.add_column(column, justify="left" if column == "archive" else "right")
    for r in loads:
        held = counts.get(r.label, {})
        table.add_row(
            r.label,
            str(r.studies_before),
            str(r.studies_loaded),
            str(r.instances),
            f"{r.seconds:.0f}",
            f"{r.instances_per_s:.0f}",
            f"{r.studies_per_s:.0f}",
            " / ".join(
                str(held.get(k, "-")) for k in ("CountStudies", "CountSeries", "CountInstances")
            ),
        )
    out.print(table)


def _search_table(rows: list[dict[str, Any]], runs: int) -> None:
    table = Table(title=f"search: p50 / p95 in ms over {runs} runs (stock / pacs-libre: x faster)")
    for column in (
        "client",
        "protocol",
        "query",
        "answers",
        "pacs-libre p50",
        "p95",
        "stock p50",
        "p95 ",
        "x p95",
    ):
        table.add_column(
            column, justify="left" if column in {"client", "protocol", "query"} else "right"
        )
    for row in rows:
        lib, stock = row["pacs-libre"], row.get("stock") or {}
        table.add_row(
            row["client"],
            row["protocol"],
            row["query"],
            str(row["answers"]),
            f"{lib['p50_ms']:.0f}",
            f"{lib['p95_ms']:.0f}",
            f"{stock['p50_ms']:.0f}" if stock else "-",
            f"{stock['p95_ms']:.0f}" if stock else "-",
            "-" if row.get("ratio_p95") is None else f"{row['ratio_p95']:.1f}x",
        )
    out.print(table)


@app.command("retrieve")
def retrieve_cmd(
    *,
    inventory: Path = INVENTORY_OPT,
    slices: int = typer.Option(300, "--slices", min=1, max=2000, help="CT slices (512x512)."),
    runs: int = typer.Option(3, "--runs", min=1, max=20, help="Runs of each method, in turn."),
    fmt: TableOrJson = FORMAT_OPT,
) -> None:
    """A CT pulled to this machine by C-MOVE, C-GET and WADO-RS, against raw dcmtk storescu."""
    inv = inventory if inventory.exists() else lab.project_root() / inventory
    the_lab = lab.load_lab(inv)
    web = bench_view.web_endpoint(the_lab)
    endpoints = lab.status(the_lab)["endpoints"]
    endpoint = endpoints.get("dicom") or {}
    destination = endpoint.get("move_destination") or {}
    if not destination.get("aet") or not destination.get("port"):
        raise UserError(
            "the lab publishes no move destination (`pacsctl lab status`, endpoints.dicom): "
            "declare the workstation in the inventory's lab_endpoints"
        )
    where = resolve_target(None, None, None, inv)
    study = _stored_ct(slices, where)
    ca = Path(str((endpoints.get("web") or {}).get("ca") or (inv / "pki" / "ca.crt")))
    setup = bench_retrieve.Setup(
        archive_host=where.host,
        archive_port=where.port,
        archive_aet=where.aet,
        workstation_aet=str(destination["aet"]),
        workstation_port=int(destination["port"]),
        study_uid=study.study_instance_uid,
        files=tuple(study.paths),
        web_url=web.url,
        web_user=web.user,
        web_password=web.password,
        cafile=ca if ca.is_absolute() else lab.project_root() / ca,
    )
    with console.status("[bold]retrieve[/]") as spinner:
        pulls = bench_retrieve.measure(setup, runs, progress=spinner.update)
    raw = pulls[0]
    data: dict[str, Any] = {
        "command": "pacsctl " + " ".join(sys.argv[1:]) if sys.argv else "",
        "study": {"uid": setup.study_uid, "images": raw.images, "bytes": raw.bytes},
        "pulls": [p.as_dict(raw) for p in pulls],
    }
    if fmt == "json":
        typer.echo(json.dumps(data, indent=2))
        return
    _print_against_raw(
        f"{raw.images}-image CT ({raw.bytes / 1e6:.0f} MB) to this machine, "
        f"median of {runs} run(s), workstation with TCP_NODELAY",
        data["pulls"],
    )


def _print_against_raw(title: str, rows: list[dict[str, Any]]) -> None:
    """A table of methods against raw dcmtk (bench_retrieve.Pull.as_dict rows)."""
    table = Table(title=title)
    for column in ("method", "median s", "images/s", "MB/s", "of raw dcmtk", "runs (s)"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in rows:
        table.add_row(
            row["method"], f"{row['median_s']:.2f}", f"{row['images_per_s']:.0f}",
            f"{row['mb_per_s']:.0f}",
            "-" if row["of_raw"] is None else f"{100 * row['of_raw']:.0f} %",
            " ".join(f"{s:.2f}" for s in row["seconds"]),
        )  # fmt: skip
    out.print(table)


@app.command("forward")
def forward_cmd(
    *,
    relay: str = typer.Option(
        "pacs-lab-relay1",
        "--relay",
        help="The peripheral site's relay, as its ssh config names it.",
    ),
    main: str = typer.Option(
        "pacs-lab-pacs1", "--main", help="The main archive's host, as its ssh config names it."
    ),
    ssh_config: Path | None = typer.Option(
        None, "--ssh-config", help="ssh config that reaches both (default: the lab's)."
    ),
    inventory: Path = INVENTORY_OPT,
    images: int = typer.Option(300, "--images", min=10, max=2000, help="CT images (512x512)."),
    rounds: int = typer.Option(2, "--rounds", min=1, max=10, help="Rounds of both, in turn."),
    fmt: TableOrJson = FORMAT_OPT,
) -> None:
    """The relay's forwarding over the site link, against raw dcmtk storescu over the same link."""
    config = ssh_config or inventory.resolve() / ".ssh" / "config"
    remote = bench_forward.Remote(config)
    where = bench_forward.find_link(remote, relay, main)
    with console.status(f"[bold]{relay} -> {main} through {where.link}[/]") as spinner:
        transfers = bench_forward.measure(
            remote, where, images=images, rounds=rounds, progress=spinner.update
        )
    raw = transfers[0]
    data: dict[str, Any] = {
        "command": "pacsctl " + " ".join(sys.argv[1:]) if sys.argv else "",
        "link": {"interface": where.link, "relay": where.relay_end, "main": where.main_end},
        "study": {"images": raw.images, "bytes": raw.bytes},
        "transfers": [t.as_dict(raw) for t in transfers],
    }
    if fmt == "json":
        typer.echo(json.dumps(data, indent=2))
        return
    _print_against_raw(
        f"{raw.images}-image CT ({raw.bytes / 1e6:.0f} MB) from {relay} to {main} through "
        f"{where.link}, median of {rounds} round(s)",
        data["transfers"],
    )


@app.command("clean")
def clean_cmd() -> None:
    """Remove the stock benchmark host, its volume and network (pacs-bench-*)."""
    for line in bench.clean() or ["nothing to remove"]:
        console.print(line)


@app.command("restore")
def restore_cmd(
    *,
    host: str = typer.Option(
        "pacs-lab-pacs1", "--host", help="The archive host, as its ssh config names it."
    ),
    ssh_config: Path | None = typer.Option(
        None, "--ssh-config", help="ssh config that reaches it (default: the lab's)."
    ),
    inventory: Path = INVENTORY_OPT,
    size_mb: int = typer.Option(1024, "--size-mb", help="Size of the disk baseline's file, MiB."),
    fmt: TableOrJson = FORMAT_OPT,
) -> None:
    """Restore throughput of the images and of the index, beside the disk's own bandwidth."""
    if size_mb < 16:
        raise UserError(f"--size-mb {size_mb}: use 16 or more")
    config = ssh_config or inventory.resolve() / ".ssh" / "config"
    with console.status(
        f"[bold]{host}:[/] disk, then restic restore, the packs over SSH, then pgbackrest restore"
    ):
        measures = bench_restore.run(host, config, size_mb=size_mb)
    disk = measures[0].mb_per_s
    rows = [
        {**m.as_dict(), "ratio": round(m.mb_per_s / disk, 2) if disk else None} for m in measures
    ]
    if fmt == "json":
        command = "pacsctl " + " ".join(sys.argv[1:]) if sys.argv else ""
        typer.echo(json.dumps({"command": command, "host": host, "runs": rows}, indent=2))
        return
    table = Table(title=f"Restore throughput on {host}")
    columns = (
        "what",
        "MB",
        "seconds",
        "MB/s",
        "vs disk",
        "CPU s",
        "CPU/wall",
        "wait/wall",
        "detail",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in {"what", "detail"} else "right")
    for row in rows:
        table.add_row(
            str(row["name"]),
            f"{int(str(row['bytes'])) / 1e6:.0f}",
            f"{float(str(row['seconds'])):.1f}",
            f"{row['mb_per_s']}",
            "" if row["ratio"] is None else f"{row['ratio']}",
            "" if row["cpu_seconds"] is None else f"{float(str(row['cpu_seconds'])):.1f}",
            "" if row["cpu_share"] is None else f"{row['cpu_share']}",
            "" if row["wait_share"] is None else f"{row['wait_share']}",
            str(row["detail"]),
        )
    out.print(table)
