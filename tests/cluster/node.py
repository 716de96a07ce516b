"""A real single-node Kubernetes for tests: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and a kubelet running pods through containerd's CRI, runc and the CNI bridge plugin.

The Kubernetes binaries come from ``k8s/install-kubernetes.sh``; containerd, runc and the CNI
plugins are Debian's (``tests/install-debian-packages.sh``). Two settings this machine needs:
containerd's ``restrict_oom_score_adj`` (the processes here lack CAP_SYS_RESOURCE, so runc fails to
raise a pod's OOM score) and a locally built pause image as ``sandbox_image`` (no registry). The
images come from podman's storage (``make images``); containerd's store lives in the node's work
folder and goes with it at teardown, since the train image takes 13 GB there (its layers and their
unpacked snapshot) and is rebuilt whenever the code changes.

Missing from a full cluster: kube-proxy and CoreDNS. Pods reach the host, and what runs there, on
the bridge address ``Node.host_ip``; nothing routes Service ClusterIPs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from devkit.kafka_local import free_ports

TOOLS_BIN = Path(os.environ.get("VLF_TOOLS_BIN", Path.home() / ".cache" / "vlf" / "tools" / "bin"))
BRIDGE = "vlf0"
HOST_IP = "10.244.0.1"
POD_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/24"
NODE_NAME = "vlf-node"
SANDBOX_IMAGE = "localhost/vlf-pause:3.10"
TOKEN = "vlf-node-admin-token"


@dataclass
class Node:
    api_url: str
    api_port: int
    kubeconfig: Path
    work: Path
    host_ip: str = HOST_IP
    pod_cidr: str = POD_CIDR
    started_in_s: float = 0.0
    _clients: dict = field(default_factory=dict)

    def _api_client(self):  # noqa: ANN202 - kubernetes.client.ApiClient
        from kubernetes import config

        if "api" not in self._clients:
            self._clients["api"] = config.new_client_from_config(str(self.kubeconfig))
        return self._clients["api"]

    def core_api(self):  # noqa: ANN201 - kubernetes.client.CoreV1Api
        from kubernetes import client

        return client.CoreV1Api(self._api_client())

    def apps_api(self):  # noqa: ANN201 - kubernetes.client.AppsV1Api
        from kubernetes import client

        return client.AppsV1Api(self._api_client())

    def batch_api(self):  # noqa: ANN201 - kubernetes.client.BatchV1Api
        from kubernetes import client

        return client.BatchV1Api(self._api_client())

    def log(self, component: str) -> str:
        path = self.work / f"{component}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def create_host_path_volume(self, name: str, path: Path, size: str, access_modes: list[str]) -> None:
        """A PersistentVolume on a folder of this machine; a claim with no storage class binds to it."""
        self.core_api().create_persistent_volume(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": name},
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": access_modes,
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "hostPath": {"path": str(path), "type": "Directory"},
                },
            }
        )


def _binary(name: str) -> str:
    path = TOOLS_BIN / name
    if not path.is_file():
        pytest.fail(
            f"{name} is missing from {TOOLS_BIN}: run `bash k8s/install-kubernetes.sh`", pytrace=False
        )
    return str(path)


def _system_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: run `bash tests/install-debian-packages.sh`", pytrace=False)
    return path


class _Processes:
    """The node's processes, started in order and stopped in reverse."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.running: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = (self.work / f"{name}.log").open("ab")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.running.append((name, process))
        return process

    def check(self) -> None:
        for name, process in self.running:
            if process.poll() is not None:
                tail = (self.work / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")

    def stop(self, name: str | None = None) -> None:
        for entry in reversed(list(self.running)):
            if name is not None and entry[0] != name:
                continue
            process = entry[1]
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            self.running.remove(entry)


def _wait(what: str, processes: _Processes, probe, timeout_s: float = 120) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        processes.check()
        with suppress(Exception):
            if probe():
                return
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready within {timeout_s:.0f}s")


def _ensure_bridge() -> None:
    """The bridge with the host's address, before any pod: the host's servers listen on it."""
    if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode != 0:
        subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
    addresses = subprocess.run(["ip", "-4", "addr", "show", BRIDGE], capture_output=True, text=True).stdout
    if f"{HOST_IP}/" not in addresses:
        subprocess.run(["ip", "addr", "add", f"{HOST_IP}/16", "dev", BRIDGE], check=True)
    subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)


def _write_containerd_config(work: Path) -> Path:
    cni_dir = work / "cni"
    cni_dir.mkdir()
    (cni_dir / "10-vlf.conflist").write_text(
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "vlf",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": BRIDGE,
                        "isGateway": True,
                        "ipMasq": True,
                        "hairpinMode": True,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": POD_CIDR, "gateway": HOST_IP}]],
                            "routes": [{"dst": "0.0.0.0/0"}],
                            "dataDir": str(work / "cni-ipam"),
                        },
                    },
                    {"type": "portmap", "capabilities": {"portMappings": True}},
                    {"type": "loopback"},
                ],
            }
        )
    )
    config = work / "containerd.toml"
    config.write_text(
        f"""version = 2
root = "{work / "containerd"}"
state = "{work / "containerd-state"}"
[grpc]
  address = "{work / "containerd.sock"}"
[ttrpc]
  address = "{work / "containerd.sock.ttrpc"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_dir}"
"""
    )
    return config


def _kubeconfig(path: Path, server: str, ca: Path) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "vlf", "cluster": {"server": server, "certificate-authority": str(ca)}}
                ],
                "users": [{"name": "admin", "user": {"token": TOKEN}}],
                "contexts": [{"name": "vlf", "context": {"cluster": "vlf", "user": "admin"}}],
                "current-context": "vlf",
            }
        )
    )


def _kubelet_config(work: Path, port: int) -> Path:
    path = work / "kubelet.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kubelet.config.k8s.io/v1beta1",
                "kind": "KubeletConfiguration",
                "address": HOST_IP,
                "port": port,
                "readOnlyPort": 0,
                "healthzPort": 0,
                "cgroupDriver": "cgroupfs",
                "failSwapOn": False,
                "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
                "authorization": {"mode": "AlwaysAllow"},
                "evictionHard": {
                    "memory.available": "100Mi",
                    "nodefs.available": "1%",
                    "imagefs.available": "1%",
                    "nodefs.inodesFree": "1%",
                },
                "imageGCHighThresholdPercent": 100,
                "imageGCLowThresholdPercent": 99,
                "containerRuntimeEndpoint": f"unix://{work / 'containerd.sock'}",
                "resolvConf": "/etc/resolv.conf",
                "maxPods": 50,
                "serializeImagePulls": False,
                "staticPodPath": "",
            }
        )
    )
    return path


def _import_images(ctr: list[str], images: list[str]) -> None:
    """Streams each image from podman's storage into containerd (``podman save | ctr images
    import -``): no archive on disk beside the two stores."""
    missing = [i for i in images if subprocess.run(["podman", "image", "exists", i]).returncode != 0]
    if missing:
        pytest.fail(f"images not built: {missing}; run `make images` (docker/build-images.sh)", pytrace=False)
    for image in images:
        save = subprocess.Popen(
            ["podman", "save", "--quiet", "--format", "docker-archive", image],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        imported = subprocess.run([*ctr, "images", "import", "-"], stdin=save.stdout, capture_output=True)
        save.stdout.close()
        saved_error = save.stderr.read().decode()
        if save.wait() != 0 or imported.returncode != 0:
            raise RuntimeError(f"importing {image} failed: {saved_error}{imported.stderr.decode()}")


def _node_ready(node: Node) -> bool:
    [item] = node.core_api().list_node().items
    return any(c.type == "Ready" and c.status == "True" for c in item.status.conditions or [])


def _running_tasks(ctr: list[str]) -> list[str]:
    listed = subprocess.run([*ctr, "tasks", "list", "--quiet"], capture_output=True, text=True)
    return listed.stdout.split() if listed.returncode == 0 else []


def _delete_pods(node: Node, ctr: list[str], timeout_s: float = 30) -> None:
    """Delete every pod and wait until the kubelet has stopped their sandboxes: stopping a sandbox
    is what runs the CNI DEL that removes its network namespace, veth and masquerade rules. Best
    effort; what is left is killed below."""
    with suppress(Exception):
        core = node.core_api()
        for pod in core.list_pod_for_all_namespaces().items:
            core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)
    deadline = time.monotonic() + timeout_s
    while _running_tasks(ctr) and time.monotonic() < deadline:
        time.sleep(0.5)


def _release_networks(work: Path, before: set[str]) -> None:
    """The pod network namespaces this run created and the kubelet did not release (it was killed
    first): CNI DEL through the bridge plugin (veth, masquerade rules, address), then the netns."""
    netns_dir = Path("/run/netns")
    if not netns_dir.is_dir():
        return
    conflist = json.loads((work / "cni" / "10-vlf.conflist").read_text())
    bridge = {**conflist["plugins"][0], "cniVersion": conflist["cniVersion"], "name": conflist["name"]}
    addresses = Path(bridge["ipam"]["dataDir"]) / conflist["name"]
    for name in sorted({p.name for p in netns_dir.iterdir()} - before):
        shown = subprocess.run(
            ["ip", "-n", name, "-4", "-o", "addr", "show", "eth0"], capture_output=True, text=True
        ).stdout.split()
        ip = shown[3].split("/")[0] if len(shown) > 3 else ""
        with suppress(OSError, IndexError):
            container_id = (addresses / ip).read_text().split()[0]
            env = {
                **os.environ,
                "CNI_COMMAND": "DEL",
                "CNI_CONTAINERID": container_id,
                "CNI_NETNS": str(netns_dir / name),
                "CNI_IFNAME": "eth0",
                "CNI_PATH": "/usr/lib/cni",
            }
            subprocess.run(
                ["/usr/lib/cni/bridge"], input=json.dumps(bridge), env=env, capture_output=True, text=True
            )
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def _kill_containers(ctr: list[str]) -> None:
    """Kill what the kubelet left running: tasks, then their containers."""
    listed = subprocess.run([*ctr, "containers", "list", "--quiet"], capture_output=True, text=True)
    for container_id in listed.stdout.split():
        subprocess.run([*ctr, "tasks", "kill", "--signal", "SIGKILL", container_id], capture_output=True)
    time.sleep(1)
    for container_id in listed.stdout.split():
        subprocess.run([*ctr, "tasks", "delete", "--force", container_id], capture_output=True)
        subprocess.run([*ctr, "containers", "delete", container_id], capture_output=True)


def _unmount_under(root: Path) -> None:
    """Pod volumes and sandbox /dev/shm mounts left under the node's folder, deepest first."""
    mounts = subprocess.run(["findmnt", "-rno", "TARGET"], capture_output=True, text=True).stdout.split()
    for target in sorted((m for m in mounts if m.startswith(f"{root}/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)


@contextmanager
def single_node(work: Path, images: list[str]) -> Iterator[Node]:
    """Start the node, import ``images`` (and the pause image) from podman into its containerd,
    yield once the node is Ready and the default ServiceAccount exists; stop and remove everything
    on exit."""
    started = time.monotonic()
    binaries = {
        n: _binary(n)
        for n in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet")
    }
    containerd, _ = _system_binary("containerd"), _system_binary("runc")
    work.mkdir(parents=True, exist_ok=True)
    _ensure_bridge()
    processes = _Processes(work)
    netns_before = {p.name for p in Path("/run/netns").iterdir()} if Path("/run/netns").is_dir() else set()
    ctr = [_system_binary("ctr"), "--address", str(work / "containerd.sock"), "--namespace", "k8s.io"]
    kubelet_root = work / "kubelet"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(work / "sa.key"), "2048"], check=True, capture_output=True
    )
    (work / "tokens.csv").write_text(f"{TOKEN},admin,admin,system:masters\n")
    etcd_port, peer_port, api_port, kubelet_port, kcm_port, scheduler_port = (free_ports() for _ in range(6))
    etcd_url, peer_url = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{peer_port}"
    api_url = f"https://{HOST_IP}:{api_port}"
    ca = work / "certs" / "apiserver.crt"
    kubeconfig = work / "kubeconfig"
    node = Node(api_url=api_url, api_port=api_port, kubeconfig=kubeconfig, work=work)
    try:
        processes.start("containerd", [containerd, "--config", str(_write_containerd_config(work))])
        _wait(
            "containerd",
            processes,
            lambda: subprocess.run([*ctr, "version"], capture_output=True).returncode == 0,
        )
        _import_images(ctr, [SANDBOX_IMAGE, *images])
        processes.start(
            "etcd",
            [binaries["etcd"], "--name", "vlf", "--data-dir", str(work / "etcd"),
             "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
             "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
             "--initial-cluster", f"vlf={peer_url}", "--unsafe-no-fsync", "--log-level", "warn"],
        )  # fmt: skip
        _wait("etcd", processes, lambda: httpx.get(etcd_url + "/health", timeout=2).is_success)
        processes.start(
            "kube-apiserver",
            [binaries["kube-apiserver"], "--etcd-servers", etcd_url, "--bind-address", "0.0.0.0",
             "--advertise-address", HOST_IP, "--secure-port", str(api_port),
             "--cert-dir", str(work / "certs"), "--service-cluster-ip-range", SERVICE_CIDR,
             "--authorization-mode", "Node,RBAC", "--token-auth-file", str(work / "tokens.csv"),
             "--service-account-issuer", "https://kubernetes.default.svc",
             "--service-account-key-file", str(work / "sa.key"),
             "--service-account-signing-key-file", str(work / "sa.key"),
             "--kubelet-preferred-address-types", "InternalIP"],
        )  # fmt: skip
        headers = {"Authorization": f"Bearer {TOKEN}"}
        _wait(
            "kube-apiserver",
            processes,
            lambda: httpx.get(api_url + "/readyz", verify=False, headers=headers, timeout=2).is_success,
        )
        _kubeconfig(kubeconfig, api_url, ca)
        processes.start(
            "kube-controller-manager",
            [binaries["kube-controller-manager"], "--kubeconfig", str(kubeconfig),
             "--root-ca-file", str(ca), "--service-account-private-key-file", str(work / "sa.key"),
             "--use-service-account-credentials", "--leader-elect=false",
             "--bind-address", "127.0.0.1", "--secure-port", str(kcm_port),
             "--cluster-cidr", POD_CIDR, "--service-cluster-ip-range", SERVICE_CIDR],
        )  # fmt: skip
        processes.start(
            "kube-scheduler",
            [binaries["kube-scheduler"], "--kubeconfig", str(kubeconfig), "--leader-elect=false",
             "--bind-address", "127.0.0.1", "--secure-port", str(scheduler_port)],
        )  # fmt: skip
        processes.start(
            "kubelet",
            [binaries["kubelet"], "--config", str(_kubelet_config(work, kubelet_port)),
             "--kubeconfig", str(kubeconfig), "--hostname-override", NODE_NAME, "--node-ip", HOST_IP,
             "--root-dir", str(kubelet_root), "--cert-dir", str(work / "kubelet-certs")],
        )  # fmt: skip
        _wait("the node", processes, lambda: _node_ready(node), timeout_s=180)
        _wait(
            "the default ServiceAccount",
            processes,
            lambda: node.core_api().read_namespaced_service_account("default", "default") is not None,
        )
        node.started_in_s = time.monotonic() - started
        yield node
    except RuntimeError as exc:
        logs = "\n".join(f"--- {name}\n{node.log(name)[-1500:]}" for name, _ in processes.running)
        raise RuntimeError(f"{exc}\n{logs}") from exc
    finally:
        with suppress(Exception):
            for pod in node.core_api().list_pod_for_all_namespaces().items:
                node.core_api().delete_namespaced_pod(
                    pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0
                )
        # No controller recreates what is deleted, no scheduler binds it.
        processes.stop("kube-controller-manager")
        processes.stop("kube-scheduler")
        _delete_pods(node, ctr)
        processes.stop("kubelet")
        _kill_containers(ctr)
        _release_networks(work, netns_before)
        processes.stop()
        _unmount_under(work)
        shutil.rmtree(work / "containerd", ignore_errors=True)
