"""Turn a flat list of PCI functions into GPUs with companions: the same on every platform."""

from __future__ import annotations

from typing import Iterable, Mapping

from gpupass.core import records
from gpupass.core.domain import catalog
from gpupass.core.domain.inventory import Gpu, PassthroughState
from gpupass.core.domain.pci import IommuGroup, PciAddress, PciFunction


def with_known_bars(function: PciFunction) -> PciFunction:
    """Fill unknown BARs from the catalog of known GPUs; leave them unknown otherwise."""
    if function.bars is not None:
        return function
    known = catalog.lookup(function.vendor_id, function.device_id)
    if known is None or known.bars is None:
        return function
    return records.replace(function, bars=known.bars)


def model_name(function: PciFunction) -> str:
    known = catalog.lookup(function.vendor_id, function.device_id)
    return known.name if known else (function.name or f"GPU {function.ids}")


def group_gpus(
    functions: Iterable[PciFunction],
    iommu_groups: Mapping[PciAddress, IommuGroup],
    owners: Mapping[PciAddress, str],
    passthrough: Mapping[PciAddress, PassthroughState] | None = None,
    location: str = "",
) -> list[Gpu]:
    """A GPU is a display (03h) or processing-accelerator (12h) function; its companions are the other functions
    of the same card."""
    by_device: dict[tuple[int, int, int], list[PciFunction]] = {}
    for function in functions:
        by_device.setdefault(function.address.device, []).append(function)
    gpus: list[Gpu] = []
    for members in by_device.values():
        members.sort(key=lambda f: f.address)
        display = [f for f in members if f.is_gpu]
        if not display:
            continue
        primary = display[0]
        companions = tuple(with_known_bars(f) for f in members if f is not primary)
        gpus.append(
            Gpu(
                function=with_known_bars(primary),
                companions=companions,
                iommu_group=iommu_groups.get(primary.address),
                passthrough=(passthrough or {}).get(primary.address, PassthroughState()),
                assigned_to=owners.get(primary.address),
                model=model_name(primary),
                location=location,
            )
        )
    gpus.sort(key=lambda gpu: (gpu.location, gpu.address))
    return gpus
