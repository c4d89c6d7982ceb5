"""How much guest MMIO space a set of BARs needs, and how each platform expresses the window.

The platforms differ only in data (default window, headroom, granularity, whether the window is a power of
two), so each backend hands the core a `MmioPolicy` instead of its own arithmetic.
"""

from __future__ import annotations

from typing import Iterable

from gpupass.core.domain.pci import Bar
from gpupass.core.records import record

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# No BAR can be larger than the physical address space it is mapped into: at most 52 bits on x86-64
# (torvalds/linux arch/x86/include/asm/sparsemem.h: MAX_PHYSADDR_BITS is 52 with 5-level paging, else 44).
MAX_BAR_BYTES = 1 << 52

# The total BAR size above which guest firmware must be EFI and the MMIO window has to be raised.
LARGE_BAR_THRESHOLD = 16 * GiB


def next_power_of_two(value: int) -> int:
    return 1 if value <= 1 else 1 << (value - 1).bit_length()


def align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def packed_size(sizes: Iterable[int]) -> int:
    """Space taken by BARs each aligned to its own size, placed largest first (no padding wasted)."""
    offset = 0
    for size in sorted(sizes, reverse=True):
        offset = align_up(offset, next_power_of_two(size)) + size
    return offset


@record(frozen=True)
class MmioNeed:
    """What the devices need: 64-bit (high) and 32-bit (low) BAR space, packed and rounded.

    `high_packed` is the packed size before rounding, for platforms whose window is not a power of two.
    """

    high: int
    low: int
    total_bars: int
    high_packed: int = 0

    @property
    def is_large(self) -> bool:
        return self.total_bars > LARGE_BAR_THRESHOLD


def mmio_need(bars: Iterable[Bar]) -> MmioNeed:
    bars = list(bars)
    high = [bar.size for bar in bars if bar.is_64bit]
    low = [bar.size for bar in bars if not bar.is_64bit]
    return MmioNeed(
        high=next_power_of_two(packed_size(high)) if high else 0,
        low=next_power_of_two(packed_size(low)) if low else 0,
        total_bars=sum(bar.size for bar in bars),
        high_packed=packed_size(high),
    )


@record(frozen=True)
class MmioPolicy:
    """One platform's translation of an MMIO need into a guest window setting."""

    default_window: int
    adjustable: bool = True
    max_window: int | None = None
    headroom: int = 0
    granularity: int = MiB
    power_of_two: bool = True
    # A VM that has no window configured may still have a fixed budget for ALL its passthrough BARs,
    # counted as their plain sum: ESXi without pciPassthru.use64bitMMIO maps at most 917504 pages of
    # 4 KiB (3.5 GiB) (real vmware.log, Dell KB 000199172). None: no such budget, the default window
    # applies to an unconfigured VM.
    budget_without_window: int | None = None

    def _needed(self, need: MmioNeed) -> int:
        return (need.high if self.power_of_two else need.high_packed) + self.headroom

    def window_for(self, need: MmioNeed) -> int:
        """The window to configure for `need` (never smaller than the platform default)."""
        wanted = self._needed(need)
        if self.power_of_two:
            wanted = next_power_of_two(wanted)
        wanted = align_up(wanted, self.granularity)
        return max(wanted, self.default_window)

    def explain(self, need: MmioNeed) -> str:
        """What the GPUs need, in the terms this platform sizes its window by.

        A platform that packs the BARs (Hyper-V) needs less than the power-of-two figure KVM and ESXi use;
        printing only the power of two next to a smaller window would read as under-provisioned.
        """
        if self.power_of_two or need.high_packed == need.high:
            return f"the GPUs need {format_bytes(need.high)} of 64-bit MMIO"
        extra = f" plus {format_bytes(self.headroom)} headroom" if self.headroom else ""
        return (f"the GPUs' 64-bit BARs take {format_bytes(need.high_packed)} packed; the window is sized to that"
                f"{extra}, not rounded up to a power of two ({format_bytes(need.high)})")

    def fits(self, need: MmioNeed, current_window: int | None) -> bool:
        if current_window is None and self.budget_without_window is not None:
            return need.total_bars <= self.budget_without_window
        window = self.default_window if current_window is None else current_window
        return self._needed(need) <= window

    def effective_window(self, current_window: int | None) -> int:
        """What a VM with `current_window` (None: nothing configured) has for its BARs."""
        if current_window is not None:
            return current_window
        return self.default_window if self.budget_without_window is None else self.budget_without_window


def format_bytes(size: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} B"


def parse_size(text: str) -> int:
    """'64G', '64GiB', '512M', '1048576' -> bytes (binary units, as BARs are)."""
    from gpupass.core.errors import UsageError

    units = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": 1 << 40}
    shown = text if len(text) <= 40 else text[:40] + "..."
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = raw, ""
    if raw and raw[-1] in units:
        number, unit = raw[:-1], raw[-1]
    # ASCII digits only (int() would take other scripts' digits), and few enough that int() is cheap and safe.
    if not (number.isascii() and number.isdigit()) or len(number) > 24:
        raise UsageError(f"{shown!r} is not a size", remedy="write sizes like 64G, 512M or a number of bytes")
    size = int(number) * units[unit]
    if not 0 < size <= MAX_BAR_BYTES:
        raise UsageError(f"{shown!r} is {'zero' if size == 0 else 'larger than any BAR can be'}",
                         remedy=f"a BAR size is more than 0 and at most {format_bytes(MAX_BAR_BYTES)} (the x86-64 "
                                f"physical address space), e.g. 16M+64G+32M for an A100 40GB")
    return size
