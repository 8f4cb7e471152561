"""Bot settings from the environment and an optional ``.env`` file, in sections.

Each section is a pydantic-settings class that reads flat, documented variable names (see
``.env.example``); :func:`load_settings` builds all of them into one frozen :class:`Settings`.
Secrets (``DISCORD_TOKEN``, ``COINGLASS_API_KEY``) are :class:`~pydantic.SecretStr`: their repr,
str and JSON dump show ``**********``, and validation errors never echo input values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from analysis import paths
from analysis.errors import InputError
from analysis.files import read_regular

if TYPE_CHECKING:
    import httpx

    from analysis.model import ModelParams
    from analysis.sources.base import Source

__all__ = [
    "DiscordSettings",
    "DatabaseSettings",
    "SourceSettings",
    "ScheduleSettings",
    "TapeSettings",
    "ScaleSettings",
    "parse_shard_ids",
    "Settings",
    "parse_ws_url",
    "parse_https_url",
    "DEFAULT_METHOD_URL",
    "parse_tape_symbols",
    "load_settings",
    "default_database_url",
    "check_env_file",
    "MAX_ENV_FILE_BYTES",
    "model_params",
    "build_sources",
    "build_shared",
]

MAX_ENV_FILE_BYTES = 1024 * 1024  # a settings file is a few dozen lines


def _config(env_file: str | Path | None) -> SettingsConfigDict:
    return SettingsConfigDict(
        env_file=env_file,
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        frozen=True,
        hide_input_in_errors=True,
        populate_by_name=True,
        env_ignore_empty=True,
    )


#: Where ``/about`` links for the method (docs/methodology.md of the project's repository).
DEFAULT_METHOD_URL = "https://github.com/liqmap/liqmap/blob/main/docs/methodology.md"


def parse_https_url(text: str) -> str:
    """An ``https://`` URL with a host and no credentials, at most 512 characters, else ``ValueError``
    (shown as a link in Discord: nothing that could hide another address or break the markdown)."""
    from urllib.parse import urlsplit

    raw = str(text).strip()
    bad = any(c.isspace() or not c.isprintable() or c in "<>()[]`\"|" for c in raw)
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018  (a bad port raises here)
    except ValueError:
        raise ValueError("not a URL; write e.g. https://example.org/methodology") from None
    if parts.scheme != "https" or not parts.hostname or "@" in parts.netloc or len(raw) > 512 or bad:
        raise ValueError("must be an https:// URL with a host, no user or password, no spaces or brackets, "
                         "at most 512 characters")
    return raw


class DiscordSettings(BaseSettings):
    """Discord connection: the bot token and an optional development guild for instant sync; the
    method link ``/about`` shows."""

    model_config = _config(".env")

    token: SecretStr | None = Field(None, validation_alias="DISCORD_TOKEN")
    dev_guild_id: int | None = Field(None, validation_alias="DEV_GUILD_ID", gt=0)
    method_url: str = Field(DEFAULT_METHOD_URL, validation_alias="LIQMAP_METHOD_URL")

    @field_validator("method_url")
    @classmethod
    def _method_url(cls, v: str) -> str:
        return parse_https_url(v)

    @property
    def has_token(self) -> bool:
        return self.token is not None and bool(self.token.get_secret_value().strip())


class DatabaseSettings(BaseSettings):
    """Where subscriptions live: SQLite (default, one process) or PostgreSQL via asyncpg."""

    model_config = _config(".env")

    # default: the absolute SQLite file in the data dir (analysis.paths), never the working directory
    url: str = Field(default_factory=lambda: default_database_url(), validation_alias="DATABASE_URL", min_length=1)

    def __repr_args__(self):  # a password in the URL must not reach logs or tracebacks
        yield "url", redact_url(self.url)


class SourceSettings(BaseSettings):
    """Market data: which sources the report service uses, the CoinGlass key and the cache dir."""

    model_config = _config(".env")

    source: str = Field("live", validation_alias="LIQMAP_SOURCE", min_length=1)
    coinglass_api_key: SecretStr | None = Field(None, validation_alias="COINGLASS_API_KEY")
    cache_dir: Path | None = Field(None, validation_alias="LIQMAP_CACHE_DIR")
    # model overrides in `--set` syntax, e.g. "holding_days=7, leverage_spread=0.3" (analysis.model)
    model: str = Field("", validation_alias="LIQMAP_MODEL")
    # Binance's openInterestHist limit (requests per 5 minutes per IP) and the share of it spent steadily
    # (the rest is the burst, so no window exceeds the limit); see analysis.sources.budget
    binance_oi_per_5m: int = Field(1000, validation_alias="LIQMAP_BINANCE_OI_PER_5M", ge=10, le=100_000)
    binance_oi_margin: float = Field(0.9, validation_alias="LIQMAP_BINANCE_OI_MARGIN", ge=0.5, le=0.99,
                                     allow_inf_nan=False)

    @property
    def state_dir(self) -> Path:
        """Where the bot keeps small local state (the last synced command hash)."""
        return paths.cache_dir(self.cache_dir)

    @property
    def has_coinglass(self) -> bool:
        return self.coinglass_api_key is not None and bool(self.coinglass_api_key.get_secret_value().strip())


class ScheduleSettings(BaseSettings):
    """Timing and limits: daily grace window, skew- and cluster-alert check interval, caps, /liqmap cache and cooldown."""

    model_config = _config(".env")

    daily_grace_minutes: float = Field(120.0, validation_alias="LIQMAP_DAILY_GRACE_MINUTES", ge=0, le=24 * 60)
    watch_interval_minutes: float = Field(15.0, validation_alias="LIQMAP_WATCH_INTERVAL_MINUTES", ge=1, le=24 * 60)
    # final daily-delivery records older than this are pruned once a day (docs/architecture.md, Retention)
    delivery_retention_days: float = Field(30.0, validation_alias="LIQMAP_DELIVERY_RETENTION_DAYS", ge=3, le=3650)
    guild_subscription_cap: int = Field(25, validation_alias="LIQMAP_GUILD_SUBSCRIPTION_CAP", ge=1, le=1000)
    report_ttl_seconds: float = Field(120.0, validation_alias="LIQMAP_REPORT_TTL_SECONDS", ge=0, le=3600)
    report_cache_mb: float = Field(64.0, validation_alias="LIQMAP_REPORT_CACHE_MB", ge=0, le=16384, allow_inf_nan=False)
    # charts render in a process pool (analysis.render_pool): unset = one worker per core, 0 = in a thread
    render_workers: int | None = Field(None, validation_alias="LIQMAP_RENDER_WORKERS", ge=0, le=256)
    render_queue: int | None = Field(None, validation_alias="LIQMAP_RENDER_QUEUE", ge=0, le=10_000)  # unset: 4 per worker
    render_wait_seconds: float = Field(30.0, validation_alias="LIQMAP_RENDER_WAIT_SECONDS", ge=0, le=600)
    render_timeout_seconds: float = Field(120.0, validation_alias="LIQMAP_RENDER_TIMEOUT_SECONDS", gt=0, le=3600)
    cooldown_uses: int = Field(2, validation_alias="LIQMAP_COOLDOWN_USES", ge=1, le=100)
    cooldown_seconds: float = Field(30.0, validation_alias="LIQMAP_COOLDOWN_SECONDS", ge=0, le=3600)
    # Discord's global limit is about 50 requests per second per bot: the dispatcher's posts spend this much
    discord_posts_per_second: float = Field(45.0, validation_alias="LIQMAP_DISCORD_POSTS_PER_SECOND", gt=0, le=50,
                                            allow_inf_nan=False)

    @field_validator("render_workers", "render_queue", mode="before")
    @classmethod
    def _unset_when_empty(cls, v: Any) -> Any:
        """An empty value (``LIQMAP_RENDER_WORKERS=``) means unset: the default."""
        return None if isinstance(v, str) and not v.strip() else v


TAPE_DEFAULT_SYMBOLS = ("BTCUSDT", "ETHUSDT")
MAX_TAPE_SYMBOLS = 50  # one subscription topic per symbol per venue; venues cap topics per connection


def parse_ws_url(text: str) -> str:
    """A ``ws://`` or ``wss://`` URL with a host (a venue override), else ``ValueError``."""
    from urllib.parse import urlsplit

    raw = str(text).strip()
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018  (a bad port raises here)
    except ValueError:
        raise ValueError("not a URL; write e.g. wss://relay.example/ws or ws://127.0.0.1:8765") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname or len(raw) > 2000 or any(c.isspace() for c in raw):
        raise ValueError("must be a ws:// or wss:// URL with a host, e.g. wss://relay.example/ws or ws://127.0.0.1:8765")
    return raw


def parse_tape_symbols(text: str) -> tuple[str, ...]:
    """``"BTC, ethusdt"`` -> ``("BTCUSDT", "ETHUSDT")`` (deduplicated, at most 50), else ``ValueError``."""
    import re

    from analysis.symbols import parse_symbol

    out: list[str] = []
    items = [item for item in re.split(r"[\s,;]+", str(text)) if item]
    for n, item in enumerate(items, 1):
        if item:
            try:
                sym = parse_symbol(item).symbol
            except InputError:  # settings errors never quote the value
                raise ValueError(f"item {n} is not a symbol; use tickers like BTC, ETHUSDT or SOL-USDT-SWAP") from None
            if sym not in out:
                out.append(sym)
    if len(out) > MAX_TAPE_SYMBOLS:
        raise ValueError(f"at most {MAX_TAPE_SYMBOLS} symbols (got {len(out)})")
    return tuple(out)


class TapeSettings(BaseSettings):
    """The realized-liquidation tape (issue 11): whether the bot records it, what, how long it is kept.

    Off by default: recording keeps three websocket connections open and writes to the database
    around the clock, which an operator should choose (``liqmap tape`` runs it as its own process).
    """

    model_config = _config(".env")

    tape_enabled: bool = Field(False, validation_alias="LIQMAP_TAPE")
    tape_venues: str = Field("bybit,binance,okx", validation_alias="LIQMAP_TAPE_VENUES")
    # empty: what the bot needs, i.e. BTC and ETH plus the symbols of active daily reports and alerts
    tape_symbols: str = Field("", validation_alias="LIQMAP_TAPE_SYMBOLS")
    # 30 days: the live score's longest --days plus the 24 h overlays, about 100 MB at a busy month's rate
    tape_retention_days: float = Field(30.0, validation_alias="LIQMAP_TAPE_RETENTION_DAYS", ge=1, le=3650, allow_inf_nan=False)
    tape_url_bybit: str | None = Field(None, validation_alias="LIQMAP_TAPE_URL_BYBIT")
    tape_url_binance: str | None = Field(None, validation_alias="LIQMAP_TAPE_URL_BINANCE")
    tape_url_okx: str | None = Field(None, validation_alias="LIQMAP_TAPE_URL_OKX")
    # Hyperliquid open interest (issue 13): Hyperliquid serves no OI history, so liqmap records it.
    # Off by default like the tape; one request of weight 20 per interval (1200 per minute allowed).
    hl_oi_enabled: bool = Field(False, validation_alias="LIQMAP_HL_OI")
    hl_oi_interval_s: float = Field(60.0, validation_alias="LIQMAP_HL_OI_INTERVAL", ge=5, le=3600, allow_inf_nan=False)
    # empty: the top 50 coins by open-interest notional at each snapshot
    hl_oi_symbols: str = Field("", validation_alias="LIQMAP_HL_OI_SYMBOLS")

    @field_validator("tape_venues")
    @classmethod
    def _venues(cls, v: str) -> str:
        from analysis.tape.events import FEED_SAMPLED

        names: list[str] = []
        items = [i.strip().lower() for i in str(v).replace(";", ",").replace(" ", ",").split(",") if i.strip()]
        for n, name in enumerate(items, 1):
            if name not in FEED_SAMPLED:  # settings errors never quote the value
                raise ValueError(f"item {n} is not a tape venue; choose from {', '.join(FEED_SAMPLED)}")
            if name not in names:
                names.append(name)
        if not names:
            raise ValueError(f"name at least one of {', '.join(FEED_SAMPLED)}")
        return ",".join(names)

    @field_validator("tape_symbols", "hl_oi_symbols")
    @classmethod
    def _symbols(cls, v: str) -> str:
        return ",".join(parse_tape_symbols(v))

    @field_validator("tape_url_bybit", "tape_url_binance", "tape_url_okx")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None or not str(v).strip() else parse_ws_url(v)

    @property
    def venue_list(self) -> tuple[str, ...]:
        return tuple(self.tape_venues.split(","))

    @property
    def symbol_list(self) -> tuple[str, ...]:
        """The configured symbols; empty means "what the bot needs" (see ``bot.tape_store.needed_symbols``)."""
        return tuple(s for s in self.tape_symbols.split(",") if s)

    @property
    def hl_oi_params(self) -> Any:
        """The Hyperliquid OI poller's :class:`~analysis.sources.hyperliquid_oi.OiPollParams`."""
        from analysis.sources.hyperliquid_oi import OiPollParams

        return OiPollParams(interval_s=self.hl_oi_interval_s,
                            symbols=tuple(s for s in self.hl_oi_symbols.split(",") if s))

    @property
    def urls(self) -> dict[str, str]:
        """Venue -> URL override, only for the venues that have one."""
        pairs = (("bybit", self.tape_url_bybit), ("binance", self.tape_url_binance), ("okx", self.tape_url_okx))
        return {venue: url for venue, url in pairs if url}

    def __repr_args__(self):  # a relay URL may carry a password
        for key, value in self.model_dump().items():
            yield key, redact_url(value) if key.startswith("tape_url_") and value else value

MAX_SHARDS = 100_000  # Discord's own ceiling is far below: a guard against a typo, not a limit


def parse_shard_ids(text: str) -> tuple[int, ...]:
    """``"0-3"`` -> ``(0, 1, 2, 3)``; ``"0,2"`` -> ``(0, 2)``; ``"0-1, 4"`` -> ``(0, 1, 4)``, in the
    order given; else ``ValueError`` (a duplicate, a reversed range, something not a number)."""
    import re

    out: list[int] = []
    items = [i for i in re.split(r"[\s,;]+", str(text)) if i]
    for n, item in enumerate(items, 1):
        m = re.fullmatch(r"(\d{1,6})(?:-(\d{1,6}))?", item)
        if m is None:  # settings errors never quote the value
            raise ValueError(f"item {n} is not a shard id or range; write e.g. 0-3 or 0,1")
        lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if hi < lo:
            raise ValueError(f"item {n} is a reversed range; write the lower id first, e.g. 0-3")
        if hi - lo >= MAX_SHARDS:
            raise ValueError(f"item {n} spans more than {MAX_SHARDS} shards")
        for i in range(lo, hi + 1):
            if i in out:
                raise ValueError(f"shard {i} is named twice (item {n}); name each shard once")
            out.append(i)
    return tuple(out)


class ScaleSettings(BaseSettings):
    """Running past one process (issue 14): sharding, which process dispatches, the shared Redis.

    * ``LIQMAP_SHARD_COUNT`` (all shards) and ``LIQMAP_SHARD_IDS`` (this process's, e.g. ``0-3`` or
      ``0,1``): unset, discord.py's ``AutoShardedBot`` asks Discord for the count and runs every
      shard here; a count alone runs all of that many here; ids need the count, each below it.
    * ``LIQMAP_DISPATCHER``: ``auto`` (default) runs the daily posts and the alert watchers in the
      process that holds shard 0 (or runs every shard); ``on``/``off`` force it. Every post still
      goes through the claim lease in the database, so two dispatchers never post one report twice.
    * ``LIQMAP_REDIS_URL`` (``redis://[:password@]host:port/db``): the report cache, the single-flight of
      identical reports and the venues' rate-limit budgets shared by every process on the host
      (:mod:`analysis.sharing`); unset, each process keeps its own. The URL's password never reaches a log.
    """

    model_config = _config(".env")

    shard_count: int | None = Field(None, validation_alias="LIQMAP_SHARD_COUNT", ge=1, le=MAX_SHARDS)
    shard_ids: str = Field("", validation_alias="LIQMAP_SHARD_IDS")
    dispatcher: str = Field("auto", validation_alias="LIQMAP_DISPATCHER")
    redis_url: str | None = Field(None, validation_alias="LIQMAP_REDIS_URL")
    redis_prefix: str = Field("liqmap", validation_alias="LIQMAP_REDIS_PREFIX", min_length=1, max_length=40,
                              pattern=r"^[A-Za-z0-9_.-]+$")
    redis_timeout_s: float = Field(0.5, validation_alias="LIQMAP_REDIS_TIMEOUT", gt=0, le=30, allow_inf_nan=False)

    @field_validator("shard_ids")
    @classmethod
    def _ids(cls, v: str) -> str:
        return ",".join(str(i) for i in parse_shard_ids(v))

    @field_validator("dispatcher")
    @classmethod
    def _dispatcher(cls, v: str) -> str:
        v = str(v).strip().lower()
        if v not in ("auto", "on", "off"):
            raise ValueError("choose auto, on or off")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, v: str | None) -> str | None:
        if v is None or not str(v).strip():
            return None
        from urllib.parse import urlsplit

        raw = str(v).strip()
        try:
            parts = urlsplit(raw)
            parts.port  # noqa: B018  (a bad port raises here)
        except ValueError:
            raise ValueError("not a URL; write e.g. redis://127.0.0.1:6379/0") from None
        if parts.scheme not in ("redis", "rediss", "unix") or (parts.scheme != "unix" and not parts.hostname) \
                or any(c.isspace() for c in raw) or len(raw) > 2000:
            raise ValueError("must be a redis://, rediss:// or unix:// URL, e.g. redis://127.0.0.1:6379/0")
        return raw

    @model_validator(mode="after")
    def _shards(self) -> "ScaleSettings":
        ids = self.shard_id_list
        if ids and self.shard_count is None:
            raise ValueError("LIQMAP_SHARD_IDS needs LIQMAP_SHARD_COUNT (the number of shards of all processes)")
        if self.shard_count is not None:
            bad = [i for i in ids if i >= self.shard_count]
            if bad:
                raise ValueError(f"LIQMAP_SHARD_IDS: shard {bad[0]} is not below LIQMAP_SHARD_COUNT={self.shard_count} "
                                 f"(ids run from 0 to {self.shard_count - 1})")
        return self

    @property
    def shard_id_list(self) -> tuple[int, ...]:
        """This process's shard ids (empty: every shard, or discord.py decides)."""
        return tuple(int(i) for i in self.shard_ids.split(",") if i)

    @property
    def runs_dispatcher(self) -> bool:
        """Whether this process runs the dispatcher (see ``LIQMAP_DISPATCHER``)."""
        if self.dispatcher != "auto":
            return self.dispatcher == "on"
        return not self.shard_id_list or 0 in self.shard_id_list

    def shard_of(self, guild_id: int) -> int | None:
        """The shard that carries ``guild_id`` (Discord's ``(guild_id >> 22) % shard_count``); None unsharded."""
        return None if self.shard_count is None else (int(guild_id) >> 22) % self.shard_count

    def __repr_args__(self):  # the Redis URL may carry a password
        for key, value in self.model_dump().items():
            yield key, redact_url(value) if key == "redis_url" and value else value


@dataclass(frozen=True)
class Settings:
    """All sections together."""

    discord: DiscordSettings
    database: DatabaseSettings
    sources: SourceSettings
    schedule: ScheduleSettings
    tape: TapeSettings
    scale: ScaleSettings

    def safe_dict(self) -> dict[str, Any]:
        """Every setting, with secrets shown only as set/unset (safe to print or log)."""
        out: dict[str, Any] = {}
        for name in ("discord", "database", "sources", "schedule", "tape", "scale"):
            section: BaseSettings = getattr(self, name)
            values = {}
            for key, value in section.model_dump().items():
                if isinstance(value, SecretStr) or key in ("token", "coinglass_api_key"):
                    values[key] = "set" if value is not None and str(value) else "unset"
                else:
                    values[key] = str(value) if isinstance(value, Path) else value
            if name == "sources":
                values["cache_dir"] = str(section.cache_dir) if section.cache_dir else f"default ({section.state_dir})"
            out[name] = values
        out["database"]["url"] = redact_url(out["database"]["url"])
        for key in ("tape_url_bybit", "tape_url_binance", "tape_url_okx"):
            if out["tape"][key]:
                out["tape"][key] = redact_url(out["tape"][key])
        if out["scale"]["redis_url"]:
            out["scale"]["redis_url"] = redact_url(out["scale"]["redis_url"])
        return out


def default_database_url() -> str:
    """The SQLite file ``liqmap.sqlite3`` in the data dir (``LIQMAP_DATA_DIR``, ``$STATE_DIRECTORY``, ...)."""
    return paths.default_database_url()


def redact_url(url: str) -> str:
    """``postgresql+asyncpg://user:secret@host/db`` -> ``postgresql+asyncpg://user:***@host/db``."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    cred, _, host = rest.rpartition("@")
    user = cred.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in cred else url


def check_env_file(env_file: str | Path | None) -> None:
    """Refuse a settings file that exists but is not a regular UTF-8 text file of at most
    :data:`MAX_ENV_FILE_BYTES` (InputError naming the file, never quoting its content).

    Checked with ``stat`` before it is opened (a FIFO would block the reader) and read
    non-blocking; a missing file is fine (the environment alone is used).
    """
    if env_file is None:
        return
    path = Path(env_file)
    if not path.exists() and not path.is_symlink():
        return
    try:
        data = read_regular(path, MAX_ENV_FILE_BYTES)
    except ValueError as exc:
        raise InputError(f"the settings file {path} is refused: {exc} (at most {MAX_ENV_FILE_BYTES} bytes of text)") from None
    except OSError as exc:
        raise InputError(f"cannot read the settings file {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"the settings file {path} is not UTF-8 text (line {line}); save it as UTF-8") from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise InputError(f"the settings file {path} holds a NUL character (line {line}); it is not a text file")


def _alias(cls: type[BaseSettings], name: str) -> str:
    alias = cls.model_fields[name].validation_alias
    return alias if isinstance(alias, str) else name


def load_settings(env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """Read every section from the environment and ``env_file`` (missing file is fine).

    ``overrides`` are keyword values by section field, e.g. ``load_settings(None, source="sample")``.
    Raises :class:`InputError` naming the bad variable(s) or file, never echoing their values.
    """
    check_env_file(env_file)
    sections = {
        "discord": DiscordSettings,
        "database": DatabaseSettings,
        "sources": SourceSettings,
        "schedule": ScheduleSettings,
        "tape": TapeSettings,
        "scale": ScaleSettings,
    }
    built: dict[str, BaseSettings] = {}
    problems: list[str] = []
    for name, cls in sections.items():
        # by alias: older pydantic-settings let a .env value under the alias win over a field name
        mine = {_alias(cls, k): v for k, v in overrides.items() if k in cls.model_fields}
        try:
            built[name] = cls(_env_file=env_file, **mine)  # type: ignore[call-arg]
        except ValidationError as exc:
            for err in exc.errors(include_input=False, include_url=False):
                if not err["loc"]:  # a check across fields (ScaleSettings' shards): its message names them
                    problems.append(str(err["msg"]).removeprefix("Value error, "))
                    continue
                field = str(err["loc"][0])
                alias = cls.model_fields[field].validation_alias if field in cls.model_fields else field
                problems.append(f"{alias}: {err['msg']}")
        except (ValueError, OSError) as exc:  # pydantic-settings' own SettingsError, an unreadable file
            raise InputError(f"cannot read the settings ({type(exc).__name__}); check {env_file or 'the environment'}") from None
    unknown = set(overrides) - {f for cls in sections.values() for f in cls.model_fields}
    if unknown:
        problems.append(f"unknown setting(s): {', '.join(sorted(unknown))}")
    sources = built.get("sources")
    if isinstance(sources, SourceSettings):
        try:
            model_params(sources)
        except InputError as exc:
            problems.append(f"LIQMAP_MODEL: {exc}")
    if problems:
        raise InputError("invalid settings: " + "; ".join(problems))
    return Settings(**built)  # type: ignore[arg-type]


def model_params(sources: SourceSettings, extra: Iterable[str] = ()) -> ModelParams:
    """The model parameters: defaults, then ``LIQMAP_MODEL``, then ``extra`` (``--set KEY=VALUE``),
    all read by :func:`analysis.model.parse_overrides`."""
    from analysis.model import ModelParams, split_overrides

    return ModelParams().with_overrides([*split_overrides(sources.model), *extra])


def build_sources(settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> dict[str, Source]:
    """The named sources of ``LIQMAP_SOURCE`` with the CoinGlass key and ``LIQMAP_CACHE_DIR``: what the
    bot and ``liqmap report`` both use. ``transport`` replaces the network (tests)."""
    from analysis.sources.registry import make_sources

    src = settings.sources
    # the key goes only where it is used: live data (CoinGlass is a live source)
    key = src.coinglass_api_key.get_secret_value().strip() if src.has_coinglass and src.source.strip() == "live" else ""
    kwargs: dict[str, Any] = {"transport": transport} if transport is not None else {}
    sources = make_sources(src.source, cache_dir=src.cache_dir.expanduser() if src.cache_dir is not None else None,
                           coinglass_api_key=key or None, **kwargs)
    attach_oi_history(sources, settings.database.url)
    configure_oi_budget(sources, src)
    return sources


def build_shared(settings: Settings) -> Any:
    """The shared layer of ``LIQMAP_REDIS_URL`` (an :class:`analysis.sharing.RedisLayer`), or None.
    Needs the ``redis`` extra (``pip install 'liqmap[redis]'``): without it, an InputError saying so."""
    scale = settings.scale
    if not scale.redis_url:
        return None
    try:
        from analysis.sharing import RedisLayer
        import redis.asyncio  # noqa: F401
    except ImportError:
        raise InputError("LIQMAP_REDIS_URL is set but the redis package is missing; "
                         "install liqmap[redis] (pip install 'liqmap[redis]')") from None
    return RedisLayer(scale.redis_url, prefix=scale.redis_prefix, timeout_s=scale.redis_timeout_s)


def configure_oi_budget(sources: Mapping[str, Any], src: SourceSettings) -> None:
    """Give the Binance source the open-interest budget of ``LIQMAP_BINANCE_OI_PER_5M`` and
    ``LIQMAP_BINANCE_OI_MARGIN`` (the defaults are Binance's documented 1,000 and 0.9)."""
    setter = getattr(sources.get("binance"), "set_oi_budget", None)
    if setter is None:
        return
    from dataclasses import replace

    from analysis.sources.binance import OI_BUDGET

    setter(replace(OI_BUDGET, limit=src.binance_oi_per_5m, margin=src.binance_oi_margin))


def attach_oi_history(sources: Mapping[str, Any], url: str) -> None:
    """Give a Hyperliquid source without one the OI history recorded in the database at ``url``
    (read lazily, never created: ``bot.hl_oi_store.LazyOiHistory``)."""
    hl = sources.get("hyperliquid")
    if hl is None or getattr(hl, "oi_history", False) is not None:
        return
    from .hl_oi_store import LazyOiHistory

    hl.oi_history = LazyOiHistory(url)
