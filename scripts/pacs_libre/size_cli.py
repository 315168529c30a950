"""``pacsctl size``: run the sizing model and print it, write group_vars, draw the plot."""

from __future__ import annotations

import json
import shlex
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from ansible_collections.pacs_libre.core.plugins.module_utils.pgtune import (
    DiskType,
    PgWorkload,
    SizingError,
)
from pacs_libre import __version__
from pacs_libre.cli_options import SIZE_FORMAT_OPT, SizeFormat
from pacs_libre.errors import UserError
from pacs_libre.sizing import (
    BackupOptions,
    FilmOptions,
    Modality,
    ModalityProfile,
    Prices,
    RaidLevel,
    SizingInputs,
    SizingResult,
    StorageOptions,
    group_vars,
    plot_storage_growth,
    size,
)

_MODALITY_ALIASES = {
    "CT": Modality.CT,
    "MR": Modality.MR,
    "MRI": Modality.MR,
    "CR": Modality.CR_DX,
    "DX": Modality.CR_DX,
    "CR/DX": Modality.CR_DX,
    "CRDX": Modality.CR_DX,
    "US": Modality.US,
    "MG": Modality.MG,
    "XA": Modality.XA,
    "NM": Modality.NM_PT,
    "PT": Modality.NM_PT,
    "PET": Modality.NM_PT,
    "NM/PT": Modality.NM_PT,
    "NMPT": Modality.NM_PT,
}

# Where a model field comes from on the command line, for error messages.
_OPTION_OF: dict[tuple[str, ...], str] = {
    ("compression_ratio",): "--compression",
    ("pg_max_connections",): "--max-connections",
    ("pg_workload",): "--pg-workload",
    ("storage", "hot_spares"): "--spares",
    ("storage", "raid"): "--raid",
    ("storage", "disk_type"): "--disk",
    ("db_storage", "disk_tb"): "--db-disk-tb",
    ("db_storage", "disk_type"): "--db-disk",
    ("backup", "copies"): "--backup-copies",
    ("backup", "retention_days"): "--backup-retention-days",
    ("film", "films_per_day"): "--films-per-day",
    ("film", "eur_per_film"): "--eur-per-film",
    ("film", "days_per_year"): "--film-days",
}
_HINTS = {
    "--growth": "; a fraction: 0.05 means 5 %/yr",
    "--max-fill": "; a fraction: 0.8 means 80 %",
    "--fs-overhead": "; a fraction: 0.05 means 5 %",
}


def _modality(text: str, option: str) -> Modality:
    key = text.strip().upper()
    if key not in _MODALITY_ALIASES:
        names = ", ".join(m.value for m in Modality)
        raise UserError(f"{option}: unknown modality '{text}' (use one of {names})")
    return _MODALITY_ALIASES[key]


def _pairs(values: list[str], option: str) -> list[tuple[str, float]]:
    """Parse repeated ``KEY=NUMBER`` options."""
    pairs = []
    for item in values:
        key, sep, number = item.partition("=")
        try:
            if not sep:
                raise ValueError(item)
            pairs.append((key.strip(), float(number)))
        except ValueError:
            raise UserError(f"{option}: expected KEY=NUMBER, got '{item}'") from None
    return pairs


def _validation_message(exc: ValidationError) -> str:
    """One line naming the option, the problem and the value."""
    errors = exc.errors()
    first = errors[0]
    loc = tuple(str(part) for part in first["loc"])
    message = first["msg"]
    if message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    message = message[0].lower() + message[1:]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if not loc:
        return f"{message}{more}"
    if loc[0] == "studies":
        option = f"--studies {loc[1]}" if len(loc) > 1 else "--studies"
    elif loc[0] == "prices":
        option = f"--price {loc[-1]}"
    elif loc[0] == "mix":
        option = f"--study-mb {loc[1]}" if len(loc) > 1 else "--study-mb"
    else:
        option = _OPTION_OF.get(loc, "--" + loc[-1].replace("_", "-"))
    got = f"got {first.get('input')!r}{_HINTS.get(option, '')}"
    return f"{option}: {message} ({got}){more}"


def _command_line(ctx: typer.Context) -> str:
    """The command line that reproduces this run (options the user gave, in canonical order)."""
    words = ["pacsctl", ctx.info_name or "size"]
    for param in ctx.command.params:
        if param.param_type_name != "option" or param.name is None:
            continue
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name not in ("COMMANDLINE", "ENVIRONMENT"):
            continue
        value = ctx.params[param.name]
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            words += [param.opts[0], str(item.value if isinstance(item, StrEnum) else item)]
    return shlex.join(words)


def _tidy(value: Any) -> Any:
    """Round floats to 6 significant digits for people to read (the model keeps full ones)."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {key: _tidy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_tidy(item) for item in value]
    return value


def render_group_vars(result: SizingResult, command_line: str) -> str:
    """A commented YAML file that an inventory includes as group_vars."""
    wrapped = _wrap_command(command_line)
    lines = [
        "---",
        f"# Sizing of this hospital, generated by pacs-libre {__version__} with:",
        *[f"#   {line}" for line in wrapped],
        "# Do not edit by hand: change the options and run the command again.",
        "# The model and its defaults: docs/sizing.md (French: docs/fr/dimensionnement.md).",
        "# Units: TB = 10^12 bytes and GB = 10^9 bytes, as disks are sold; RAM in GB as sold.",
    ]
    for name, value, comment in group_vars(result):
        lines.append("")
        lines.append(f"# {comment}")
        dumped = yaml.safe_dump(
            {name: _tidy(value)}, sort_keys=False, default_flow_style=False, allow_unicode=True
        )
        lines.extend(dumped.rstrip("\n").splitlines())
    return "\n".join(lines) + "\n"


def _wrap_command(command_line: str, width: int = 90) -> list[str]:
    """Split a long command with shell continuations, keeping it copy-pastable."""
    words = shlex.split(command_line)
    lines: list[str] = []
    current = ""
    for word in (shlex.quote(w) for w in words):
        if current and word.startswith("--") and len(current) + len(word) + 1 > width:
            lines.append(current + " \\")
            current = "  " + word
        else:
            current = f"{current} {word}" if current else word
    lines.append(current)
    return lines


def _print_table(result: SizingResult, console: Console) -> None:
    inputs = result.inputs
    who = f"{inputs.beds} beds" if inputs.beds else "explicit study counts"
    console.print(
        f"[bold]pacs-libre sizing[/bold]: {who}, horizon {inputs.years} yr, "
        f"growth {inputs.growth:.1%}/yr, retention {inputs.retention} yr, "
        f"compression {inputs.compression_ratio:g}:1"
    )

    activity = Table(title="First year, per modality", title_justify="left")
    for column in ("modality", "studies", "images/study", "MB/study", "TB"):
        activity.add_column(column, justify="left" if column == "modality" else "right")
    for modality, count in result.studies_per_year.items():
        profile = inputs.mix[modality]
        tb = count * profile.mb_per_study / 1e6 / inputs.compression_ratio
        activity.add_row(
            modality.value,
            f"{count:,}",
            f"{profile.images_per_study:g}",
            f"{profile.mb_per_study:,.0f}",
            f"{tb:.3f}",
        )
    activity.add_row(
        "total",
        f"{sum(result.studies_per_year.values()):,}",
        "",
        "",
        f"{result.images_tb_per_year:.3f}",
        style="bold",
    )
    console.print(activity)

    per_year = Table(title="Year by year", title_justify="left")
    for column in (
        "year",
        "studies",
        "images TB",
        "database GB",
        "images stored TB",
        "database size GB",
        "archive fill",
    ):
        per_year.add_column(column, justify="right")
    for row in result.years:
        per_year.add_row(
            str(row.year),
            f"{row.studies:,}",
            f"{row.images_tb:.2f}",
            f"{row.database_gb:.1f}",
            f"{row.images_tb_stored:.2f}",
            f"{row.database_gb_stored:.1f}",
            f"{row.archive_fill:.0%}",
        )
    console.print(per_year)

    storage = Table(title="Storage to buy", title_justify="left")
    for column in ("array", "RAID", "disks", "disk", "raw TB", "usable TB", "filesystem TB"):
        storage.add_column(column, justify="left" if column == "array" else "right")
    arrays = [("archive (images)", result.archive), ("database", result.database_storage)]
    if result.backup:
        arrays.append((f"backup, per copy (x{inputs.backup.copies})", result.backup))
    for name, plan in arrays:
        storage.add_row(
            name,
            plan.raid.value,
            str(plan.disks),
            f"{plan.disk_tb:g} TB {plan.disk_type.value}",
            f"{plan.raw_tb:g}",
            f"{plan.usable_tb:g}",
            f"{plan.filesystem_tb:.2f}",
        )
    console.print(storage)
    console.print(
        f"At the horizon: images {result.images_tb_total:.2f} TB, database "
        f"{result.database_gb_total:.1f} GB, backups {result.backup_tb:.2f} TB "
        f"({inputs.backup.copies} copies)."
    )

    hosts = Table(title="Servers", title_justify="left")
    for column in ("host", "RAM GB", "CPU cores"):
        hosts.add_column(column, justify="left" if column == "host" else "right")
    hosts.add_row("archive", str(result.archive_host.ram_gb), str(result.archive_host.cpus))
    hosts.add_row("database", str(result.database_host.ram_gb), str(result.database_host.cpus))
    console.print(hosts)

    pg = Table(title="PostgreSQL (database host, pgtune)", title_justify="left")
    pg.add_column("setting")
    pg.add_column("value", justify="right")
    for key, value in result.postgresql.items():
        pg.add_row(key, value)
    console.print(pg)

    cost = Table(title="Cost estimate (EUR)", title_justify="left")
    cost.add_column("item")
    cost.add_column("EUR", justify="right")
    for item, eur in result.cost.items_eur.items():
        cost.add_row(item, f"{eur:,.0f}")
    cost.add_row("total excl. VAT", f"{result.cost.total_excl_vat_eur:,.0f}", style="bold")
    cost.add_row(
        f"total incl. VAT ({inputs.prices.vat_rate:.0%})",
        f"{result.cost.total_eur:,.0f}",
        style="bold",
    )
    cost.add_row("envelope", f"{result.cost.budget_eur:,.0f}")
    verdict = "within" if result.cost.within_budget else "[red]OVER[/red]"
    cost.add_row(f"margin ({verdict} the envelope)", f"{result.cost.margin_eur:,.0f}")
    console.print(cost)
    payback = (
        f", pays back the investment in {result.payback_years:.1f} years"
        if result.payback_years
        else ""
    )
    console.print(
        f"Film no longer printed: {result.film_savings_eur_per_year:,.0f} EUR a year{payback}."
    )
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")


def size_cmd(  # noqa: PLR0912 (one branch per output; inputs are built in _inputs)
    ctx: typer.Context,
    *,
    beds: Annotated[
        int | None, typer.Option(help="Hospital beds (with the default studies per bed).")
    ] = None,
    studies: Annotated[
        list[str] | None,
        typer.Option(
            "--studies",
            metavar="MOD=N",
            help="Explicit first-year studies of a modality (CT, MR, CR/DX, US, MG, XA, "
            "NM/PT); repeat. Replaces beds x studies per bed for that modality.",
        ),
    ] = None,
    study_mb: Annotated[
        list[str] | None,
        typer.Option(
            "--study-mb", metavar="MOD=MB", help="Average study size of a modality, MB; repeat."
        ),
    ] = None,
    years: Annotated[int, typer.Option(help="Horizon: years reported and bought for.")] = 5,
    growth: Annotated[float, typer.Option(help="Yearly growth of the volume (0.05 = 5 %).")] = 0.05,
    retention: Annotated[int, typer.Option(help="Years images are kept.")] = 20,
    compression: Annotated[
        float, typer.Option(help="Lossless compression ratio applied by the archive (1 = none).")
    ] = 1.0,
    db_kb_per_instance: Annotated[
        float, typer.Option(help="Database kB per DICOM instance, indexes included.")
    ] = 5.0,
    raid: Annotated[RaidLevel, typer.Option(help="RAID level of the archive.")] = RaidLevel.RAID6,
    disk: Annotated[
        DiskType, typer.Option(case_sensitive=False, help="Archive disk type.")
    ] = DiskType.HDD,
    disk_tb: Annotated[float, typer.Option(help="Size of one archive disk, TB.")] = 8.0,
    max_fill: Annotated[float, typer.Option(help="Fill ratio not to exceed (0.8 = 80 %).")] = 0.8,
    fs_overhead: Annotated[
        float, typer.Option(help="Filesystem metadata and reserve (0.05 = 5 %).")
    ] = 0.05,
    spares: Annotated[int, typer.Option(help="Hot spare disks in the archive.")] = 0,
    db_disk: Annotated[
        DiskType, typer.Option(case_sensitive=False, help="Database disk type (sets PostgreSQL).")
    ] = DiskType.SSD,
    db_disk_tb: Annotated[
        float, typer.Option(help="Size of one database disk (mirrored), TB.")
    ] = 1.92,
    backup_copies: Annotated[int, typer.Option(help="Backup copies, each on its own host.")] = 2,
    backup_retention_days: Annotated[int, typer.Option(help="Days backups are kept.")] = 30,
    ram_gb: Annotated[
        int | None, typer.Option(help="Database host RAM, GB (default: sized by the model).")
    ] = None,
    cpus: Annotated[
        int | None, typer.Option(help="Database host CPU cores (default: sized by the model).")
    ] = None,
    server_life: Annotated[
        int, typer.Option(help="Years a server serves: RAM and CPU are sized for that year.")
    ] = 5,
    pg_workload: Annotated[
        PgWorkload, typer.Option(case_sensitive=False, help="pgtune's DB type.")
    ] = PgWorkload.OLTP,
    max_connections: Annotated[int, typer.Option(help="PostgreSQL max_connections.")] = 100,
    pg_version: Annotated[int, typer.Option(help="PostgreSQL major version.")] = 17,
    price: Annotated[
        list[str] | None,
        typer.Option(
            "--price",
            metavar="KEY=EUR",
            help="Override a price, e.g. eur_per_tb_hdd=22 or archive_server_eur=7000; repeat.",
        ),
    ] = None,
    budget_eur: Annotated[float, typer.Option(help="Investment envelope, EUR incl. VAT.")] = 50000,
    films_per_day: Annotated[float, typer.Option(help="Films printed a day today.")] = 50,
    eur_per_film: Annotated[float, typer.Option(help="Price of one film, EUR.")] = 1.20,
    film_days: Annotated[int, typer.Option(help="Days a year films are printed.")] = 240,
    output_format: SizeFormat = SIZE_FORMAT_OPT,
    write_group_vars: Annotated[
        Path | None,
        typer.Option(metavar="PATH", help="Write the result as commented group_vars YAML."),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(metavar="PATH", help="Draw storage growth against capacity (.png, .svg)."),
    ] = None,
) -> None:
    """Size a hospital's PACS: storage, servers, PostgreSQL settings, cost and savings."""
    if plot is not None and plot.suffix.lower() not in (".png", ".svg"):
        raise UserError(f"--plot: '{plot}' must end in .png or .svg")

    explicit = {_modality(k, "--studies"): v for k, v in _pairs(studies or [], "--studies")}
    for modality, count in explicit.items():
        if count != int(count):
            raise UserError(f"--studies {modality.value}: a count of studies is whole")
    mix = dict(SizingInputs.model_fields["mix"].get_default(call_default_factory=True))
    for key, mb in _pairs(study_mb or [], "--study-mb"):
        modality = _modality(key, "--study-mb")
        if mb <= 0:
            raise UserError(f"--study-mb {modality.value}: a study size is positive (got {mb:g})")
        profile: ModalityProfile = mix[modality]
        mix[modality] = profile.model_copy(update={"mb_per_image": mb / profile.images_per_study})
    price_fields = set(Prices.model_fields)
    price_overrides: dict[str, float] = {"budget_eur": budget_eur}
    for key, eur in _pairs(price or [], "--price"):
        if key not in price_fields:
            raise UserError(f"--price: unknown key '{key}' (use one of {', '.join(price_fields)})")
        price_overrides[key] = eur

    try:
        inputs = SizingInputs.model_validate(
            {
                "beds": beds,
                "studies": {m: int(v) for m, v in explicit.items()},
                "mix": mix,
                "years": years,
                "server_life_years": server_life,
                "growth": growth,
                "retention": retention,
                "compression_ratio": compression,
                "db_kb_per_instance": db_kb_per_instance,
                "storage": StorageOptions.model_validate(
                    {
                        "raid": raid,
                        "disk_type": disk,
                        "disk_tb": disk_tb,
                        "max_fill": max_fill,
                        "fs_overhead": fs_overhead,
                        "hot_spares": spares,
                    }
                ),
                "db_storage": StorageOptions.model_validate(
                    {
                        "raid": RaidLevel.RAID1,
                        "disk_type": db_disk,
                        "disk_tb": db_disk_tb,
                        "max_fill": max_fill,
                        "fs_overhead": fs_overhead,
                    }
                ),
                "backup": BackupOptions.model_validate(
                    {
                        "copies": backup_copies,
                        "retention_days": backup_retention_days,
                        "storage": {"disk_tb": disk_tb, "max_fill": max_fill},
                    }
                ),
                "ram_gb": ram_gb,
                "cpus": cpus,
                "pg_workload": pg_workload,
                "pg_max_connections": max_connections,
                "pg_version": pg_version,
                "prices": Prices.model_validate(price_overrides),
                "film": FilmOptions.model_validate(
                    {
                        "films_per_day": films_per_day,
                        "eur_per_film": eur_per_film,
                        "days_per_year": film_days,
                    }
                ),
            }
        )
        result = size(inputs)
    except ValidationError as exc:
        raise UserError(_validation_message(exc)) from None
    except SizingError as exc:
        raise UserError(str(exc)) from None

    if output_format is SizeFormat.JSON:
        typer.echo(json.dumps(_tidy(result.model_dump(mode="json")), indent=2))
    elif output_format is SizeFormat.YAML:
        typer.echo(yaml.safe_dump(_tidy(result.model_dump(mode="json")), sort_keys=False), nl=False)
    else:
        _print_table(result, Console())

    if write_group_vars is not None:
        try:
            write_group_vars.parent.mkdir(parents=True, exist_ok=True)
            write_group_vars.write_text(render_group_vars(result, _command_line(ctx)))
        except OSError as exc:
            raise UserError(
                f"--write-group-vars: cannot write '{write_group_vars}': {exc}"
            ) from None
        print(f"pacsctl: wrote {write_group_vars}", file=sys.stderr)
    if plot is not None:
        try:
            plot_storage_growth(result, plot)
        except OSError as exc:
            raise UserError(f"--plot: cannot write '{plot}': {exc}") from None
        print(f"pacsctl: wrote {plot}", file=sys.stderr)
