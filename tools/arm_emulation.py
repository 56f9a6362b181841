"""The emulated arm64 machine and the Arm NN install of check_arm.py, built once and cached.

Everything comes from package registries through their ordinary clients, with a private apt
configuration (nothing is installed into the system, no chroot, no binfmt_misc):

  qemu-user-trixie-*/qemu-aarch64   Debian 13's qemu-user (qemu 10, a static binary that runs on
                                    Debian 12). Debian 12's qemu 7.2 segfaults inside XNNPACK.
  arm64-bookworm-*/                 Debian 12 arm64 packages of python3.11 and everything they
                                    depend on, unpacked with `dpkg-deb -x`; `opt/litert` and
                                    `opt/tflite214` hold the aarch64 wheels of each runtime and
                                    its numpy (`pip install --target --platform ...aarch64`).
  armnn-bookworm-*/                 Debian 12 amd64 packages of python3-pyarmnn (Arm NN 20.08:
                                    TfLite parser, CpuRef backend), unpacked.

Each folder is built in a temporary folder beside it and renamed when complete, so an
interrupted build is never used; a folder's name ends in a hash of its recipe, so a changed
recipe builds anew. `manifest.json` in each lists the package versions it holds. The Debian
mirror is the one this machine's apt uses (or `mirror=`); its keyring checks the signatures.
"""

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
ROOT_PACKAGES = ("python3.11", "libstdc++6")  # libstdc++: the runtimes' C++ libraries need it
ARMNN_PACKAGES = (
    "python3-pyarmnn",
    "libarmnn22",
    "libarmnntfliteparser22",
    "libarmnn-cpuref-backend22",
    "libflatbuffers2",
)
# What pip installs into the root, per runtime: the folder under opt/ and the requirements.
GUEST_SITES = {
    "litert": ("ai-edge-litert==2.3.0", "numpy<2.3"),
    "tflite214": ("tflite-runtime==2.14.0", "numpy<2"),
}
# pip needs each manylinux tag spelled out; tflite-runtime 2.14's wheel is manylinux_2_34.
AARCH64_WHEEL_TAGS = (
    "manylinux_2_34_aarch64",
    "manylinux_2_28_aarch64",
    "manylinux_2_27_aarch64",
    "manylinux_2_17_aarch64",
    "manylinux2014_aarch64",
)
GUEST_PYTHON = "usr/bin/python3.11"
_UNREACHABLE = (
    "Could not resolve",
    "Failed to fetch",
    "Temporary failure",
    "Could not connect",
    "Unable to connect",
    "NewConnectionError",
    "Failed to establish a new connection",
    "Network is unreachable",
    "ConnectTimeout",
    "Read timed out",
    "ProxyError",
    "Connection refused",
    "Could not fetch URL",
)


class BuildError(RuntimeError):
    """A cache folder could not be built; the message says which step and why."""


class RegistryUnreachable(BuildError):
    """A package registry did not answer (no network to it): nothing to check with."""


# === Cache folders ===


def cached_folder(cache_dir: str, name: str, recipe, build, group: str = "arm") -> str:
    """`cache_dir/<group>/<name>-<hash of recipe>`, made by `build(folder)` if not there yet."""
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    parent = os.path.join(cache_dir, group)
    final = os.path.join(parent, f"{name}-{digest}")
    if os.path.isdir(final):
        return final
    os.makedirs(parent, exist_ok=True)
    _remove_abandoned_builds(parent)
    scratch = tempfile.mkdtemp(prefix=f".building-{os.getpid()}-", dir=parent)
    try:
        build(scratch)
        os.chmod(scratch, 0o755)  # mkdtemp made it private
        try:
            os.rename(scratch, final)
        except OSError:
            if not os.path.isdir(final):  # else another build of the same recipe won the race
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


def _remove_abandoned_builds(parent: str):
    """Removes the temporary folders of builds whose process is gone (killed mid-build)."""
    for folder in glob.glob(os.path.join(parent, ".building-*")):
        pid = int(os.path.basename(folder).split("-")[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            pass  # another user's live process


def _run(command, what: str, env=None) -> str:
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    output = result.stdout + result.stderr
    if result.returncode:
        unreachable = any(marker in output for marker in _UNREACHABLE)
        error = RegistryUnreachable if unreachable else BuildError
        raise error(f"{what} failed ({' '.join(command[:3])} ...):\n{output[-2000:]}")
    return output


# === Debian packages, with a private apt configuration ===


def debian_mirror(apt_dir: str = "/etc/apt") -> str:
    """The Debian archive this machine's apt uses: the first `deb` source of a release's main."""
    for kind, uri, suites, components in _apt_sources(apt_dir):
        if kind == "deb" and "main" in components and any("-" not in s for s in suites):
            return uri.rstrip("/")
    raise BuildError(
        f"no Debian archive among the apt sources in {apt_dir}; "
        "pass --debian_mirror=URI (a Debian mirror's /debian folder)"
    )


def _apt_sources(apt_dir: str):
    """(type, URI, suites, components) of every enabled source, one-line and deb822 formats."""
    one_line = [
        os.path.join(apt_dir, "sources.list"),
        *sorted(glob.glob(os.path.join(apt_dir, "sources.list.d", "*.list"))),
    ]
    for path in filter(os.path.isfile, one_line):
        with open(path) as f:
            lines = f.read().splitlines()
        for line in lines:
            words = re.sub(r"\[[^\]]*\]", "", line.split("#")[0]).split()
            if len(words) >= 3:
                yield words[0], words[1], words[2:3], words[3:]
    for path in sorted(glob.glob(os.path.join(apt_dir, "sources.list.d", "*.sources"))):
        with open(path) as f:
            paragraphs = f.read().split("\n\n")
        for paragraph in paragraphs:
            fields = dict(re.findall(r"^([\w-]+):[ \t]*(.*)$", paragraph, re.MULTILINE))
            if fields.get("Enabled", "yes").lower() == "no":
                continue
            for kind in fields.get("Types", "").split():
                for uri in fields.get("URIs", "").split():
                    yield (
                        kind,
                        uri,
                        fields.get("Suites", "").split(),
                        fields.get("Components", "").split(),
                    )


class PrivateApt:
    """apt-get / apt-cache on one suite and architecture, with lists and state in `folder`."""

    def __init__(self, folder: str, mirror: str, suite: str, architecture: str):
        for sub in ("etc", "lists/partial", "cache/archives/partial"):
            os.makedirs(os.path.join(folder, sub), exist_ok=True)
        signed = f"[signed-by={DEBIAN_KEYRING}] " if os.path.exists(DEBIAN_KEYRING) else ""
        with open(os.path.join(folder, "etc", "sources.list"), "w") as f:
            f.write(f"deb {signed}{mirror} {suite} main\n")
        open(os.path.join(folder, "status"), "w").close()
        self.suite, self.mirror, self.lists = suite, mirror, os.path.join(folder, "lists")
        self.options = []
        for key, value in [
            ("Dir::Etc::SourceList", os.path.join(folder, "etc", "sources.list")),
            ("Dir::Etc::SourceParts", os.path.join(folder, "etc")),
            ("Dir::Etc::Preferences", os.path.join(folder, "etc", "preferences")),
            ("Dir::Etc::PreferencesParts", os.path.join(folder, "etc")),
            ("Dir::State::Lists", self.lists),
            ("Dir::State::status", os.path.join(folder, "status")),
            ("Dir::Cache", os.path.join(folder, "cache")),
            ("APT::Architecture", architecture),
            ("APT::Architectures::", architecture),
            ("APT::Sandbox::User", "root"),  # downloads into our folder, not as _apt
        ]:
            self.options += ["-o", f"{key}={value}"]

    def update(self):
        _run(["apt-get", *self.options, "update"], f"apt-get update of {self.suite}")
        if not glob.glob(os.path.join(self.lists, "*_Packages*")):
            raise RegistryUnreachable(
                f"apt-get update found no package list for {self.suite} at {self.mirror}"
            )

    def with_dependencies(self, packages) -> list[str]:
        """`packages` and everything they depend on (pre-depends included), recursively."""
        output = _run(
            [
                "apt-cache",
                *self.options,
                "depends",
                "--recurse",
                "--no-recommends",
                "--no-suggests",
                "--no-conflicts",
                "--no-breaks",
                "--no-replaces",
                "--no-enhances",
                *packages,
            ],
            "apt-cache depends",
        )
        names = {line.strip() for line in output.splitlines() if line and not line[0].isspace()}
        return sorted(n for n in names if not n.startswith("<"))  # <virtual> names are no .deb

    def download(self, packages, folder: str) -> list[str]:
        os.makedirs(folder, exist_ok=True)
        command = ["apt-get", *self.options, "download", *packages]
        result = subprocess.run(command, check=False, cwd=folder, capture_output=True, text=True)
        if result.returncode:
            output = result.stdout + result.stderr
            error = RegistryUnreachable if any(m in output for m in _UNREACHABLE) else BuildError
            raise error(f"apt-get download from {self.suite} failed:\n{output[-2000:]}")
        return sorted(glob.glob(os.path.join(folder, "*.deb")))


def unpack_debs(debs, destination: str) -> dict[str, str]:
    """`dpkg-deb -x` of every .deb into `destination`; returns {package: version}."""
    versions = {}
    for deb in debs:
        _run(["dpkg-deb", "-x", deb, destination], f"dpkg-deb -x {os.path.basename(deb)}")
        name, version = _run(["dpkg-deb", "-f", deb, "Package", "Version"], "dpkg-deb -f").split(
            "\n"
        )[:2]
        versions[name.split(": ", 1)[1]] = version.split(": ", 1)[1]
    return versions


def _host_architecture() -> str:
    return _run(["dpkg", "--print-architecture"], "dpkg --print-architecture").strip()


def _write_manifest(folder: str, manifest: dict):
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)


def read_manifest(folder: str) -> dict:
    with open(os.path.join(folder, "manifest.json")) as f:
        return json.load(f)


# === The three folders ===


def build_qemu(cache_dir: str, mirror: str) -> str:
    """The folder holding `qemu-aarch64` from Debian 13's qemu-user."""

    def build(folder):
        with tempfile.TemporaryDirectory() as scratch:
            apt = PrivateApt(os.path.join(scratch, "apt"), mirror, "trixie", _host_architecture())
            apt.update()
            debs = apt.download(["qemu-user"], os.path.join(scratch, "debs"))
            versions = unpack_debs(debs, os.path.join(scratch, "unpacked"))
            shutil.copy2(os.path.join(scratch, "unpacked", "usr", "bin", "qemu-aarch64"), folder)
        version = _run([os.path.join(folder, "qemu-aarch64"), "--version"], "qemu-aarch64")
        _write_manifest(folder, {"debian_packages": versions, "qemu": version.splitlines()[0]})

    return cached_folder(cache_dir, "qemu-user-trixie", ["qemu-user", "trixie"], build)


def build_arm64_root(cache_dir: str, mirror: str, qemu: str) -> str:
    """The arm64 root: Debian 12's python3.11, and each runtime's wheels under opt/."""

    def build(folder):
        with tempfile.TemporaryDirectory() as scratch:
            apt = PrivateApt(os.path.join(scratch, "apt"), mirror, "bookworm", "arm64")
            apt.update()
            debs = apt.download(apt.with_dependencies(ROOT_PACKAGES), os.path.join(scratch, "d"))
            versions = unpack_debs(debs, folder)
        wheels = {
            site: pip_install_aarch64(os.path.join(folder, "opt", site), requirements)
            for site, requirements in GUEST_SITES.items()
        }
        for site in GUEST_SITES:
            check_guest_imports(folder, qemu, site)
        _write_manifest(folder, {"debian_packages": versions, "wheels": wheels})

    recipe = [ROOT_PACKAGES, GUEST_SITES, AARCH64_WHEEL_TAGS, "bookworm"]
    return cached_folder(cache_dir, "arm64-bookworm", recipe, build)


def build_armnn(cache_dir: str, mirror: str) -> str:
    """Debian 12's pyarmnn and Arm NN libraries for this machine's architecture, unpacked."""

    def build(folder):
        with tempfile.TemporaryDirectory() as scratch:
            apt = PrivateApt(os.path.join(scratch, "apt"), mirror, "bookworm", _host_architecture())
            apt.update()
            versions = unpack_debs(apt.download(ARMNN_PACKAGES, scratch), folder)
        _write_manifest(folder, {"debian_packages": versions})

    return cached_folder(cache_dir, "armnn-bookworm", [ARMNN_PACKAGES, "bookworm"], build)


def pip_install_aarch64(target: str, requirements) -> dict[str, str]:
    """aarch64 CPython 3.11 wheels of `requirements` into `target`; returns {name: version}."""
    platforms = [arg for tag in AARCH64_WHEEL_TAGS for arg in ("--platform", tag)]
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
            target,
            "--only-binary=:all:",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--abi",
            "cp311",
            *platforms,
            *requirements,
        ],
        f"pip install of the aarch64 wheels {' '.join(requirements)}",
    )
    installed = {}
    for info in glob.glob(os.path.join(target, "*.dist-info")):
        name, version = os.path.basename(info)[: -len(".dist-info")].rsplit("-", 1)
        installed[name] = version
    return installed


# === Running ===


def guest_command(root: str, qemu: str, cpu: str, site: str, argv) -> tuple[list, dict]:
    """(command, environment) running the arm64 root's python on `argv` as CPU model `cpu`.

    The environment is built from nothing: the host's PYTHON* variables and its OpenBLAS core
    type (an x86 name) must not reach the guest, whose OpenBLAS needs ARMV8 under qemu.
    """
    env = {
        "QEMU_CPU": cpu,
        "PYTHONPATH": os.path.join(root, "opt", site),
        "PYTHONNOUSERSITE": "1",
        "OPENBLAS_CORETYPE": "ARMV8",
        "LANG": "C.UTF-8",
        "PATH": "/usr/bin:/bin",
        "HOME": tempfile.gettempdir(),
    }
    return [qemu, "-L", root, os.path.join(root, GUEST_PYTHON), *argv], env


def check_guest_imports(root: str, qemu: str, site: str):
    """Fails the build unless the guest python imports numpy and the site's runtime."""
    module = "ai_edge_litert" if site == "litert" else "tflite_runtime"
    code = f"import numpy, {module}.interpreter; print(numpy.__version__)"
    command, env = guest_command(
        root, os.path.join(qemu, "qemu-aarch64"), "cortex-a72", site, ["-c", code]
    )
    _run(command, f"importing {module} in the arm64 root", env=env)


def armnn_environment(armnn: str) -> tuple[dict, str]:
    """(environment additions, dynamic backends folder) for pyarmnn from the unpacked folder."""
    libraries = glob.glob(os.path.join(armnn, "usr", "lib", "*-linux-gnu"))[0]
    env = {
        "PYTHONPATH": os.path.join(armnn, "usr", "lib", "python3", "dist-packages"),
        "LD_LIBRARY_PATH": libraries,
    }
    return env, os.path.join(libraries, "armnn22")
