"""A single-node Apache Kafka broker (KRaft, combined broker+controller) for local runs, tests and CI.

Why a script and not a container: the dev and CI machines have Java 17 and Maven Central but no
container engine, so the broker runs from the official jars (``org.apache.kafka:kafka_2.13``),
resolved with Maven into a per-version cache.

Version choice: Kafka 4.1.1, the preferred release. kafka-python 2.3.3 negotiates API versions with
it and creates topics, produces, consumes in a group, commits and lists group offsets against it
(checked by tests/integration/test_kafka_local.py), so the 3.9.x fallback is not needed.

Logging: the broker's SLF4J binding is not a dependency of the jar; the official 4.1 tarball ships
log4j2 (``log4j-api``/``log4j-core`` 2.24.3) with ``log4j-slf4j-impl`` (slf4j 1.7), so we add that
binding and write a console log4j2 config. The flags used (``StorageTool format --standalone``,
``controller.quorum.bootstrap.servers``) need Kafka 3.9 or newer.

Layout: ``<cache_dir>/libs`` holds the jars (``.complete`` marks a finished fetch);
``<data_dir>`` holds ``server.properties``, ``log4j2.properties``, ``broker.pid``, ``broker.log``
and the log segments under ``logs/``. Stopping keeps the data dir, so a restart keeps topics and
committed offsets (what the chaos tests rely on).

CLI: ``python -m devkit.kafka_local up|down|status [--port N] [--data-dir D] [--cache-dir C]``;
``VLF_KAFKA_PORT``, ``VLF_KAFKA_DATA_DIR``, ``VLF_KAFKA_CACHE_DIR``, ``VLF_KAFKA_VERSION`` set the
defaults.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Any

import typer
from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

KAFKA_VERSION = "4.1.1"
# The SLF4J -> log4j2 binding the official tarball of KAFKA_VERSION ships in its lib folder.
LOG4J_SLF4J_BINDING = ("org.apache.logging.log4j", "log4j-slf4j-impl", "2.24.3")

FETCH_MARKER = ".complete"
STOP_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 40

LOG4J2_PROPERTIES = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.state-change.name = state.change.logger
logger.state-change.level = WARN
"""


class BrokerError(RuntimeError):
    """The local broker could not be fetched, started or stopped; the message says why."""


class BrokerConfig(BaseSettings):
    """Where the local broker lives and how it listens.

    Defaults: version 4.1.1, port 19092 (controller on port+1), data in ``.vlf/kafka`` under the
    current directory, jars in ``~/.cache/vlf/kafka/<version>``, heap 512 MiB.
    """

    model_config = SettingsConfigDict(env_prefix="VLF_KAFKA_", frozen=True, extra="forbid")

    version: str = Field(default=KAFKA_VERSION, description="org.apache.kafka:kafka_2.13 version (>= 3.9).")
    host: IPv4Address = Field(
        default=IPv4Address("127.0.0.1"),
        description="Address the broker listens on and advertises (a bridge address pods reach, say).",
    )
    port: int = Field(default=19092, ge=1, le=65534, description="PLAINTEXT port; controller: port+1.")
    data_dir: Path = Field(default=Path(".vlf/kafka"), description="Configs, pid, log and log segments.")
    cache_dir: Path = Field(
        default=None,
        validate_default=True,
        description="Jar cache; default ~/.cache/vlf/kafka/<version>.",
    )
    max_heap: str = Field(default="512m", description="JVM -Xmx value.")

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("cache_dir", mode="before")
    @classmethod
    def _default_cache_dir(cls, value: Any, info: ValidationInfo) -> Path:
        if value is None:
            return Path.home() / ".cache" / "vlf" / "kafka" / info.data["version"]
        return Path(value).expanduser().resolve()

    @property
    def controller_port(self) -> int:
        return self.port + 1

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def libs_dir(self) -> Path:
        return self.cache_dir / "libs"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def properties_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log4j_file(self) -> Path:
        return self.data_dir / "log4j2.properties"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def broker_log(self) -> Path:
        return self.data_dir / "broker.log"


# ---------------------------------------------------------------- fetch


def render_pom(version: str) -> str:
    """A throwaway pom whose only job is to let Maven resolve the broker's runtime classpath."""
    group, artifact, binding_version = LOG4J_SLF4J_BINDING
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>vlf.local</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>{group}</groupId>
      <artifactId>{artifact}</artifactId>
      <version>{binding_version}</version>
    </dependency>
  </dependencies>
</project>
"""


def fetch_jars(cfg: BrokerConfig) -> Path:
    """Resolve the broker jars into ``cfg.libs_dir`` once; later calls return at once."""
    if (cfg.cache_dir / FETCH_MARKER).exists():
        return cfg.libs_dir
    mvn = _require_executable("mvn", "install Maven (apt-get install maven) to fetch the Kafka jars")
    cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    (cfg.cache_dir / "pom.xml").write_text(render_pom(cfg.version))
    staging = cfg.cache_dir / f"libs.partial.{os.getpid()}"  # parallel fetches must not share it
    shutil.rmtree(staging, ignore_errors=True)
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(cfg.cache_dir / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BrokerError(f"mvn could not fetch kafka_2.13:{cfg.version}:\n{result.stdout}{result.stderr}")
    if (cfg.cache_dir / FETCH_MARKER).exists():  # a parallel fetch finished first
        shutil.rmtree(staging)
        return cfg.libs_dir
    shutil.rmtree(cfg.libs_dir, ignore_errors=True)
    staging.rename(cfg.libs_dir)
    (cfg.cache_dir / FETCH_MARKER).write_text(f"kafka_2.13:{cfg.version}\n")
    return cfg.libs_dir


# ---------------------------------------------------------------- configure and format


def render_server_properties(cfg: BrokerConfig) -> str:
    """Combined broker+controller on one address, sized for one node and a small machine."""
    host = cfg.host
    return f"""process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers={host}:{cfg.controller_port}
listeners=PLAINTEXT://{host}:{cfg.port},CONTROLLER://{host}:{cfg.controller_port}
advertised.listeners=PLAINTEXT://{host}:{cfg.port},CONTROLLER://{host}:{cfg.controller_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={cfg.log_dir}
num.partitions=3
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
"""


def new_cluster_id() -> str:
    """A Kafka Uuid in its wire form: url-safe base64 of 16 random bytes, unpadded."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):  # Kafka's CLI would read it as an option.
            return cluster_id


def _java_command(cfg: BrokerConfig, main_class: str, *args: str) -> list[str]:
    java = _require_executable("java", "install a Java 17+ runtime to run the local Kafka broker")
    return [
        java,
        f"-Xmx{cfg.max_heap}",
        "-Djava.awt.headless=true",
        # A local broker lives for minutes: start-up beats peak throughput. C1-only JIT and the serial
        # GC cut a cached start from ~11 s to ~7 s on a 2-core machine.
        "-XX:TieredStopAtLevel=1",
        "-XX:+UseSerialGC",
        f"-Dlog4j2.configurationFile={cfg.log4j_file}",
        "-cp",
        f"{cfg.libs_dir}/*",
        main_class,
        *args,
    ]


def write_configs(cfg: BrokerConfig) -> None:
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    cfg.properties_file.write_text(render_server_properties(cfg))
    cfg.log4j_file.write_text(LOG4J2_PROPERTIES)


def format_storage(cfg: BrokerConfig) -> None:
    """Format KRaft storage on first start only: formatting again would orphan the old data."""
    if (cfg.log_dir / "meta.properties").exists():
        return
    command = _java_command(
        cfg,
        "kafka.tools.StorageTool",
        "format",
        "-t",
        new_cluster_id(),
        "-c",
        str(cfg.properties_file),
        "--standalone",
    )
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BrokerError(f"kafka storage format failed:\n{_tail(result.stdout + result.stderr)}")


# ---------------------------------------------------------------- process control


def _read_pid(cfg: BrokerConfig) -> int | None:
    try:
        return int(cfg.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _process_alive(pid: int) -> bool:
    """True while ``pid`` runs; reaps it first when it is our own exited child (else it stays a zombie)."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_our_broker(pid: int, cfg: BrokerConfig) -> bool:
    """A stale pid file may name a recycled pid: only a process started with our config counts."""
    if not _process_alive(pid):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():  # no procfs (macOS): trust the pid file
        return True
    return str(cfg.properties_file).encode() in cmdline.read_bytes()


def broker_running(cfg: BrokerConfig) -> bool:
    """True when the process named by the pid file is this config's broker and still alive."""
    pid = _read_pid(cfg)
    return pid is not None and _is_our_broker(pid, cfg)


def free_ports(count: int = 1, low: int = 20000, high: int = 32000) -> int:
    """A port p such that p .. p+count-1 are free now (a broker needs 2: its controller is p+1).

    Picked below the kernel's ephemeral range (32768+ on Linux), unlike binding to port 0: an
    outgoing connection can take an ephemeral port while a broker or server restarts on it, which
    failed a broker restart in CI with "Address already in use".
    """
    for _ in range(200):
        port = random.randrange(low, high - count)
        if all(port_bindable(candidate) for candidate in range(port, port + count)):
            return port
    raise BrokerError(f"no {count} consecutive free ports in [{low}, {high})")


def port_bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """A cheap check before the client probe, whose failed bootstrap is slow and noisy."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def accepts_clients(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """True when a client can bootstrap, read metadata and reach a loaded group coordinator."""
    timeout_ms = int(timeout_s * 1000)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=timeout_ms,
            api_version_auto_timeout_ms=timeout_ms,
            client_id="vlf-kafka-local-probe",
        )
    except KafkaError:
        return False
    try:
        admin.list_topics()
        # Fails with CoordinatorLoadInProgress until the group coordinator has loaded the committed
        # offsets, which admin offset queries right after a restart would otherwise trip over.
        admin.list_consumer_groups()
    except KafkaError:
        return False
    finally:
        admin.close()
    return True


def _launch(cfg: BrokerConfig) -> subprocess.Popen[bytes]:
    command = _java_command(cfg, "kafka.Kafka", str(cfg.properties_file))
    with cfg.broker_log.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the CLI that started it and its Ctrl-C
            cwd=cfg.data_dir,
        )
    cfg.pid_file.write_text(f"{process.pid}\n")
    return process


def start_broker(cfg: BrokerConfig, timeout_s: float = 60) -> str:
    """Start the broker (fetching and formatting on first use) and wait until clients get metadata.

    A broker already running for this config is left alone. Returns the bootstrap address.
    """
    if broker_running(cfg) and accepts_clients(cfg.bootstrap):
        return cfg.bootstrap
    stop_broker(cfg)  # a hung or half-dead broker from an earlier run
    busy = [port for port in (cfg.port, cfg.controller_port) if port_open(port, str(cfg.host))]
    if busy:  # another process (maybe another broker) would answer our readiness probe
        raise BrokerError(f"port(s) {busy} on {cfg.host} already in use by another process")
    fetch_jars(cfg)
    write_configs(cfg)
    format_storage(cfg)
    process = _launch(cfg)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            cfg.pid_file.unlink(missing_ok=True)
            raise BrokerError(
                f"kafka broker exited with code {process.returncode} during start-up; "
                f"tail of {cfg.broker_log}:\n{_tail(cfg.broker_log.read_text(errors='replace'))}"
            )
        if port_open(cfg.port, str(cfg.host)) and accepts_clients(cfg.bootstrap, timeout_s=5.0):
            return cfg.bootstrap
        time.sleep(0.2)
    stop_broker(cfg)
    raise BrokerError(
        f"kafka broker did not accept clients on {cfg.bootstrap} within {timeout_s:.0f}s; "
        f"tail of {cfg.broker_log}:\n{_tail(cfg.broker_log.read_text(errors='replace'))}"
    )


def _wait_for_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _process_alive(pid):
            return True
        time.sleep(0.2)
    return not _process_alive(pid)


def stop_broker(cfg: BrokerConfig, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM (a controlled shutdown that flushes logs), then SIGKILL after ``timeout_s``.

    Keeps the data dir, so the next start sees the same topics and committed offsets.
    """
    pid = _read_pid(cfg)
    if pid is not None and _is_our_broker(pid, cfg):
        os.kill(pid, signal.SIGTERM)
        if not _wait_for_exit(pid, timeout_s):
            os.kill(pid, signal.SIGKILL)
            if not _wait_for_exit(pid, 10.0):
                raise BrokerError(f"kafka broker pid {pid} survived SIGKILL")
    cfg.pid_file.unlink(missing_ok=True)


def restart_broker(cfg: BrokerConfig, timeout_s: float = 60) -> str:
    """Stop and start again on the same data dir (topics and committed offsets survive)."""
    stop_broker(cfg)
    return start_broker(cfg, timeout_s=timeout_s)


# ---------------------------------------------------------------- helpers


def _require_executable(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BrokerError(f"'{name}' not found on PATH: {hint}")
    return path


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------- CLI

app = typer.Typer(help="Single-node Kafka broker (KRaft) for local work, tests and CI.", no_args_is_help=True)

PortOption = Annotated[int | None, typer.Option(help="PLAINTEXT port (controller: port+1). [19092]")]
DataDirOption = Annotated[Path | None, typer.Option(help="Data dir. [.vlf/kafka]")]
CacheDirOption = Annotated[Path | None, typer.Option(help="Jar cache. [~/.cache/vlf/kafka/<version>]")]


def _config(port: int | None, data_dir: Path | None, cache_dir: Path | None) -> BrokerConfig:
    given = {"port": port, "data_dir": data_dir, "cache_dir": cache_dir}
    return BrokerConfig(**{name: value for name, value in given.items() if value is not None})


@app.command()
def up(
    port: PortOption = None,
    data_dir: DataDirOption = None,
    cache_dir: CacheDirOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the broker.")] = 60,
) -> None:
    """Fetch the jars if needed, start the broker, wait until it serves clients."""
    cfg = _config(port, data_dir, cache_dir)
    try:
        bootstrap = start_broker(cfg, timeout_s=timeout)
    except BrokerError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from error
    typer.echo(f"kafka {cfg.version} ready at {bootstrap} (data: {cfg.data_dir})")


@app.command()
def down(port: PortOption = None, data_dir: DataDirOption = None, cache_dir: CacheDirOption = None) -> None:
    """Stop the broker; its data dir is kept."""
    cfg = _config(port, data_dir, cache_dir)
    stop_broker(cfg)
    typer.echo(f"kafka at {cfg.bootstrap} stopped")


@app.command()
def status(port: PortOption = None, data_dir: DataDirOption = None, cache_dir: CacheDirOption = None) -> None:
    """Print whether the broker runs; exit code 1 when it does not."""
    cfg = _config(port, data_dir, cache_dir)
    if broker_running(cfg):
        typer.echo(f"running at {cfg.bootstrap} (pid {_read_pid(cfg)}, data: {cfg.data_dir})")
        return
    typer.echo(f"not running (would listen at {cfg.bootstrap}, data: {cfg.data_dir})")
    raise typer.Exit(1)


if __name__ == "__main__":
    app()
