"""Turn what the user typed as HOST (a URI, a config name, a lab name) into a Target and a backend."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator
from urllib.parse import urlsplit

from gpupass.core import paths
from gpupass.core.credentials import resolve_password
from gpupass.core.errors import BackendUnavailable, GpupassError, NotFound, NotSupported, UsageError
from gpupass.core.lazylog import LazyLogger
from gpupass.core.records import replace
from gpupass.core.target import Target, TlsOptions
from gpupass.core.uri import check_uri

# Opening a host for one command reads its facts and nothing more: the snapshot codec, the planning model and the
# plugin machinery load where they are used (issue 11: `gpupass gpus` as a program near a hand-written script).
if TYPE_CHECKING:
    from gpupass.core.config import Config
    from gpupass.core.domain.context import CheckContext
    from gpupass.core.domain.inventory import HostFacts
    from gpupass.core.domain.plan import Step
    from gpupass.core.plugins import Registry
    from gpupass.core.ports import Backend

log = LazyLogger("gpupass.core")  # logging loads only where a record could be shown


def looks_like_snapshot(text: str) -> bool:
    """Whether HOST names a snapshot file (`gpupass snapshot HOST -o FILE.json`) rather than a host."""
    return text.endswith(".json") and "://" not in text and os.path.isfile(text)


def resolve_target(text: str | None, config: Config, registry: Registry, tls: TlsOptions | None = None) -> Target:
    """HOST as typed; None means the default host from the environment (gpupass.core.environment)."""
    if text is None:
        return _default_target(config, registry, tls)
    lab = registry.lab_host(text)
    if lab is not None:
        return lab.target(paths.lab_data_dir())
    entry = config.hosts.get(text)
    if entry is not None:
        check_uri(entry.uri)
        target = Target(
            uri=entry.uri,
            name=entry.name,
            tls=TlsOptions(verify=not entry.insecure, ca_file=entry.ca_file),
            options=dict(entry.options),
        )
        if entry.timeout is not None:
            target = replace(target, timeout=float(entry.timeout))
    elif "://" in text or text.startswith("test:"):
        check_uri(text)
        target = Target(uri=text)
    else:
        import difflib

        labs = [lab.name for lab in registry.lab_hosts]
        close = difflib.get_close_matches(text, [*config.hosts, *labs], n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise NotFound(
            f"unknown host {text!r}",
            remedy=f"{hint}give a URI such as qemu:///system or esxi://user@vcenter, a host name from the config "
                   f"file (`gpupass hosts list`), or a lab host ({', '.join(labs) or 'none installed'})",
        )
    if tls is not None and (not tls.verify or tls.ca_file):
        target = replace(target, tls=TlsOptions(verify=tls.verify and target.tls.verify,
                                                ca_file=tls.ca_file or target.tls.ca_file))
    password = resolve_password(target.name or target.hostname or text, entry, target.username)
    if password is None and target.scheme == "esxi":
        from gpupass.core import environment

        found = environment.vsphere_password(target.hostname)
        password = found[1] if found else None
    return replace(target, password=password)


def host_identity(text: str, config: Config, registry: Registry) -> str:
    """One string for one host however HOST spells it: a lab or config name by its URI; the URI's scheme and host
    in lower case, the loopback names as one, the port the scheme means when none is given (the backend's
    default_ports), no trailing slash, no user or query (the same host, reached as another user or with another
    option, is still that host). For commands over many entries (`gpupass apply`) that must read and plan each host
    once."""
    if looks_like_snapshot(text):
        return "snapshot:" + str(Path(text).resolve())
    lab = registry.lab_host(text)
    entry = config.hosts.get(text)
    if lab is not None:
        uri = lab.target(paths.lab_data_dir()).uri
    elif entry is not None:
        uri = entry.uri
    elif "://" in text or text.startswith("test:"):
        uri = text
    else:
        uri = resolve_target(text, config, registry).uri     # raises NotFound, naming close matches
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    backend = next((b for b in registry.backends if scheme in b.schemes), None)
    port = port or (backend.default_ports.get(scheme) if backend is not None else None)
    host = (parts.hostname or "").lower()
    if host in ("localhost", "::1") or host.startswith("127."):
        host = "localhost"
    netloc = f"[{host}]" if ":" in host else host
    return f"{scheme}://{netloc}{f':{port}' if port else ''}{parts.path.rstrip('/') or ''}"


def _default_target(config: Config, registry: Registry, tls: TlsOptions | None) -> Target:
    from gpupass.core import environment  # govc's and Ansible's variables: only when no HOST is given

    chosen = environment.default_host()
    if chosen is None:
        raise UsageError("no HOST given, and no default host is set",
                         remedy="name the host, or set one of " + ", ".join(environment.DEFAULT_HOST_VARIABLES))
    variable, value = chosen
    log.info("default host from $%s", variable)
    if variable in ("GPUPASS_HOST", "LIBVIRT_DEFAULT_URI"):
        return resolve_target(value, config, registry, tls)
    described = environment.govc() if variable == "GOVC_URL" else environment.ansible()
    if described is None:
        raise UsageError(f"${variable} is set but names no host", remedy=f"check {variable}")
    target = described.target()
    try:
        check_uri(target.uri)  # the variable's host and port, as any HOST's: a clear error, not urlsplit's
    except UsageError as exc:
        raise UsageError(f"${described.source} does not name a usable host: {exc.message}",
                         remedy=f"fix {described.source} (and its port variable), or name the host") from exc
    if tls is not None and (not tls.verify or tls.ca_file):
        target = replace(target, tls=TlsOptions(verify=tls.verify and target.tls.verify,
                                                ca_file=tls.ca_file or target.tls.ca_file))
    if target.password is None:
        target = replace(target, password=resolve_password(target.name, None, target.username))
    return target


def registry_for_host(text: str | None, config: Config) -> Registry:
    """The plugins needed to work with HOST as the user typed it: only its platform's, when the plugin
    index knows them (see gpupass.core.plugins), else every installed plugin."""
    from urllib.parse import urlsplit

    from gpupass.core import plugins

    if text is None or plugins.has_default() or looks_like_snapshot(text):
        # loaded already (or registered at run time): it is the truth; a default host: every plugin
        return plugins.default_registry()
    looks_like_uri = "://" in text or text.startswith("test:")
    # A lab host name comes first, as in resolve_target; lab hosts have names, not URIs, so a URI (a fleet of a
    # thousand of them) skips that look-up in the plugin index and goes straight to its scheme's registry.
    scoped = None if looks_like_uri else plugins.scoped_registry(lab=text)
    if scoped is None:
        entry = config.hosts.get(text)
        uri = entry.uri if entry is not None else text if looks_like_uri else None
        if uri is not None:
            try:
                scheme = urlsplit(uri).scheme
            except ValueError:  # an unclosed [ or a bracketed non-address: check_uri names it once HOST is resolved
                scheme = ""
            scoped = plugins.scoped_registry(scheme=scheme) if scheme else None
    return scoped if scoped is not None else plugins.default_registry()


def open_host(text: str | None, config: Config, registry: Registry, tls: TlsOptions | None = None) -> Backend:
    """Open what the user named as HOST: a lab host, a config name, a URI, or a snapshot file (read-only)."""
    if text is not None and looks_like_snapshot(text):
        return open_snapshot(Path(text), registry)
    return open_backend(resolve_target(text, config, registry, tls), registry)


def open_snapshot(path: Path, registry: Registry) -> Backend:
    from gpupass.core import snapshot

    document = snapshot.read(path)
    facts = snapshot.load_facts(path, document)
    platform = document["platform"]
    backend_class = next((b for b in registry.backends if b.platform == platform), None)
    if backend_class is None:
        raise BackendUnavailable(f"snapshot {path} is of platform {platform!r}, which no installed backend handles",
                                 remedy="install the plugin for that platform (`gpupass plugins` lists them)")
    with _damaged_snapshot(path):
        facts = replace(facts, state=backend_class.state_from_json(document.get("backend_state") or {}))

    class SnapshotBackend(backend_class):  # type: ignore[misc, valid-type]
        """Plans like the platform's backend, from recorded facts; never writes."""

        read_only = True

        def inventory(self) -> HostFacts:
            return facts

        def apply(self, step: Step) -> Any:
            raise NotSupported(f"{path} is a snapshot: it can be planned from, not changed",
                               remedy="run the command against the live host")

        def undo(self, step: Step, token: Any) -> None:
            raise NotSupported(f"{path} is a snapshot")

        def close(self) -> None:
            pass

        def plan_assign(self, ctx: CheckContext) -> list[Step]:
            with _damaged_snapshot(path):
                steps: list[Step] = super().plan_assign(ctx)
                return steps

        def plan_release(self, ctx: CheckContext) -> list[Step]:
            with _damaged_snapshot(path):
                steps: list[Step] = super().plan_release(ctx)
                return steps

    label = f"{document.get('label') or facts.host.uri} (snapshot {path.name})"
    # Remedies name the live host the snapshot was taken of: that is where a fix is applied.
    backend = SnapshotBackend(Target(uri=facts.host.uri, name=label,
                                     options={"live_host": document.get("label") or facts.host.uri}))
    return backend


@contextlib.contextmanager
def _damaged_snapshot(path: Path) -> Iterator[None]:
    """The platform's planner reads the snapshot's backend_state as its own; what it cannot read is the file's
    fault, reported as such rather than as a traceback."""
    try:
        yield
    except GpupassError:
        raise
    except Exception as exc:
        raise UsageError(f"snapshot {path} is damaged: its backend_state cannot be read "
                         f"({type(exc).__name__}: {str(exc)[:200]})",
                         remedy="make a new one with `gpupass snapshot HOST -o FILE`") from exc


def open_backend(target: Target, registry: Registry) -> Backend:
    backend_class = backend_class_for(target, registry)
    # A lab host's target carries the lab's name (config names may not take one); the lab opens it.
    lab = registry.lab_host(target.name) if target.name else None
    if lab is not None:
        return lab.open(backend_class, target)
    if target.tls.ca_file:
        _check_ca_file(target.tls.ca_file)
    return backend_class(target)


def _check_ca_file(path: str) -> None:
    """A CA file (--ca-file, ca_file in the config file, GOVC_TLS_CA_CERTS) that the TLS library cannot load is a
    usage error naming it: it was an OSError or ssl.SSLError traceback from inside pyVmomi's or requests' session.
    Loaded here as they load it (ssl.create_default_context(cafile=...), the standard library's own check)."""
    import ssl

    try:
        ssl.create_default_context(cafile=path)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: a file without a PEM certificate in it
        raise UsageError(f"the CA file {path} cannot be used: {getattr(exc, 'strerror', None) or exc}",
                         remedy="give --ca-file (or ca_file in the config file) the PEM file of the CA that signed "
                                "the host's certificate") from exc


def backend_class_for(target: Target, registry: Registry) -> type[Backend]:
    """The backend that handles target's scheme, once its SDK is known to be importable."""
    backend_class = registry.backend_for(target.scheme)
    backend_class.check_uri(target.uri)
    log.info("%s: %s backend, password %s", target.label, backend_class.platform,
             "given" if target.password is not None else "none")
    if not backend_class.sdk_available():
        missing = ", ".join(backend_class.sdk_modules)
        raise BackendUnavailable(
            f"the {backend_class.platform} backend needs the Python module(s) {missing}, which are not installed",
            remedy=backend_class.install_hint(),
        )
    return backend_class
