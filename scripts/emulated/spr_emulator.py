"""Runs functions of this process's own native code on an emulated Sapphire Rapids core.

The emulator is Bochs's CPU as a library (PyPI `bochscpu-python`, MIT), without an operating
system: this module builds 4-level page tables that map the emulated CPU's virtual addresses
onto the same addresses of this process (page by page, on demand, from /proc/self/maps), a
GDT and an IDT whose exception stubs report to Python (through the `clflush` hook),
and calls a function at ring 0 with the System V calling convention on a private stack.
The function must not make system calls (EFER.SCE is off: `syscall` faults and is
reported), nor rely on other threads.

Bochs 2.8's `sapphire_rapids` model (Xeon w9-3475X) implements AVX-512 F/CD/BW/DQ/VL,
VNNI, BF16, FP16 and the rest of that core's vector ISA, but bochscpu 0.4.0 is built
without AMX: its decoder rejects the tile instructions with #UD. This module therefore
emulates the AMX-TILE/AMX-BF16/AMX-INT8 instructions itself on that #UD (`ldtilecfg`,
`sttilecfg`, `tilerelease`, `tilezero`, `tileloadd(t1)`, `tilestored`, `tdpbf16ps`, `tdpbsud`),
from the Intel SDM's definitions: palette 1 (8 tiles of up to 16 rows × 64 bytes), the
#UD/#GP checks of the tile shapes, and TDPBF16PS as the SDM's pseudocode writes it
(bf16 inputs with denormals as zero, each of the two products of a pair added to the f32
sum in turn, rounding to nearest even, denormal results flushed to zero, MXCSR ignored).
Everything else (the scalar, AVX2 and AVX-512 code around the tile instructions) runs on
Bochs.

One Bochs defect is corrected at decode time: bochscpu 0.4.0 scales the compressed 8-bit
displacement (EVEX disp8*N) of VDPBF16PS's full-vector memory operand by 4 instead of the
vector size, so `vdpbf16ps zmm0, zmm2, [rsi-0x40]` reads 4 bytes before rsi instead of 64
(optimized builds fold the weights' load into the instruction this way). The `opcode`
hook rewrites the decoded displacement of such instructions; `Emulator.check_vdpbf16ps`
verifies the correction on every run (`DecoderFix`).
"""

from __future__ import annotations

import ctypes
import mmap
import struct

import numpy as np

import bochscpu
import bochscpu._bochscpu as _bochscpu
import bochscpu.cpu
import bochscpu.memory as mem

PAGE = 4096

# Index of `sapphire_rapids` in the `cpu.model` enum of bochscpu-python 0.4.0 (Bochs's CPU
# database); check_kernels.py checks the CPUID brand string. Other Intel models with AVX-512
# or AVX2 there, for the detection check: 26 corei7_skylake_x, 27 corei3_cnl (bochscpu's
# default), 28 corei7_icelake_u, 29 tigerlake, 31 arrow_lake.
SAPPHIRE_RAPIDS = 30
OTHER_MODELS = {26: "corei7_skylake_x", 27: "corei3_cnl", 28: "corei7_icelake_u",
                29: "tigerlake", 31: "arrow_lake"}
BRAND = b"Intel(R) Xeon(R) w9-3475X"

# The stubs report to Python with `clflush [mailbox + N]` (the `clflush` hook; port I/O
# would need Bochs's devices, which bochscpu does not have), eax = the vector.
MSG_EXCEPTION = 0  # #UD and #PF: handled in Python, then the stub returns
MSG_STOP = 1  # the called function returned
MSG_FATAL = 2  # an exception the emulator does not handle

_GPR = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi"] + [f"r{i}" for i in range(8, 16)]


class EmulationError(RuntimeError):
    """The emulated code faulted, made a system call or ran an unsupported instruction."""


class _DlInfo(ctypes.Structure):
    _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p),
                ("sname", ctypes.c_char_p), ("saddr", ctypes.c_void_p)]


def symbol(addr: int) -> str:
    """`library!symbol+offset` of a code address of this process (for failure messages)."""
    info = _DlInfo()
    if not ctypes.CDLL(None).dladdr(ctypes.c_void_p(addr), ctypes.byref(info)):
        return f"{addr:#x}"
    lib = (info.fname or b"?").decode().rsplit("/", 1)[-1]
    if info.sname:
        return f"{lib}!{info.sname.decode()}+{addr - info.saddr:#x}"
    return f"{lib}+{addr - (info.fbase or 0):#x}"


def _u64(addr: int) -> int:
    return ctypes.c_uint64.from_address(addr).value


def select_cpu_model(index: int) -> None:
    """Sets Bochs's `cpu.model` parameter; must run before the first `Session`."""
    lib = ctypes.CDLL(_bochscpu.__file__)
    lib.sim_get_param_enum.restype = ctypes.c_void_p
    lib.sim_get_param_enum.argtypes = [ctypes.c_char_p]
    param = lib.sim_get_param_enum(b"cpu.model")
    if not param:
        raise EmulationError("bochscpu has no cpu.model parameter")
    setter = lib._ZN14bx_param_num_c3setEl  # bx_param_num_c::set(long)
    setter.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    setter(param, index)


class _Region:
    """Host memory that stays allocated (page aligned) for the emulator's own structures."""

    def __init__(self, size: int):
        self.map = mmap.mmap(-1, size, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        self.size = size

    def write(self, off: int, data: bytes) -> None:
        self.map[off : off + len(data)] = data


class PageTables:
    """Identity-mapped (guest VA = host VA) 4-level page tables; every page gets its own
    guest-physical page backed by the host page itself."""

    def __init__(self) -> None:
        self.next_gpa = 0x1000
        self.tables: dict[int, int] = {}  # gpa -> hva of table pages
        self.mapped: set[int] = set()
        self.root = self._table()

    def _gpa(self) -> int:
        gpa = self.next_gpa
        self.next_gpa += PAGE
        return gpa

    def _table(self) -> int:
        gpa = self._gpa()
        hva = mem.allocate_host_page()
        ctypes.memset(hva, 0, PAGE)
        mem.page_insert(gpa, hva)
        self.tables[gpa] = hva
        return gpa

    def map(self, va: int, writable: bool = True) -> None:
        va &= ~(PAGE - 1)
        if va in self.mapped:
            return
        gpa = self._gpa()
        mem.page_insert(gpa, va)
        table = self.root
        for shift in (39, 30, 21):
            entry = ctypes.c_uint64.from_address(self.tables[table] + 8 * ((va >> shift) & 511))
            if entry.value == 0:
                entry.value = self._table() | 0x7
            table = entry.value & ~0xFFF & ((1 << 52) - 1)
        leaf = ctypes.c_uint64.from_address(self.tables[table] + 8 * ((va >> 12) & 511))
        leaf.value = gpa | (0x7 if writable else 0x5)
        self.mapped.add(va)


def _host_regions() -> list[tuple[int, int, str]]:
    regions = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(v, 16) for v in parts[0].split("-"))
            regions.append((lo, hi, parts[1]))
    return regions


class Amx:
    """The AMX-TILE / AMX-BF16 state and instructions (palette 1), emulated in Python."""

    # How TDPBF16PS sums: "sequential" (the intrinsics guide's pseudocode: each product
    # added to the accumulator in turn) or "lanes" (the current SDM's form as read here: the
    # even and the odd products summed separately over the instruction's k, then added
    # together and to the accumulator). Both round to nearest even with FTZ after each add.
    SUMMATIONS = ("sequential", "lanes")

    def __init__(self) -> None:
        self.release()
        self.executed: dict[str, int] = {}
        self.summation = "sequential"

    def release(self) -> None:
        """TILERELEASE (and the state at the start of each call)."""
        self.palette = 0
        self.rows = [0] * 8
        self.colsb = [0] * 8
        self.tiles = np.zeros((8, 16, 64), dtype=np.uint8)

    def _count(self, name: str) -> None:
        self.executed[name] = self.executed.get(name, 0) + 1

    def _configured(self, what: str) -> None:
        if self.palette == 0:
            raise EmulationError(f"{what} with tiles not configured (#UD)")

    def ldtilecfg(self, addr: int) -> None:
        cfg = ctypes.string_at(addr, 64)
        palette, start_row = cfg[0], cfg[1]
        if palette == 0:
            self.release()
            return
        if palette != 1:
            raise EmulationError(f"ldtilecfg: palette {palette} (#GP)")
        if any(cfg[2:16]):
            raise EmulationError("ldtilecfg: reserved bytes 2..15 not zero (#GP)")
        colsb = list(struct.unpack_from("<16H", cfg, 16))
        rows = list(cfg[48:64])
        for t in range(16):
            c, r = colsb[t], rows[t]
            if t >= 8 and (c or r):
                raise EmulationError(f"ldtilecfg: tile {t} configured (palette 1 has 8) (#GP)")
            if c > 64 or r > 16 or (c == 0) != (r == 0):
                raise EmulationError(f"ldtilecfg: tile {t} {r} rows × {c} bytes (#GP)")
        if start_row != 0:
            raise EmulationError("ldtilecfg: start_row != 0 (restartable loads not emulated)")
        self.palette = 1
        self.colsb = colsb[:8]
        self.rows = rows[:8]
        self.tiles[:] = 0

    def sttilecfg(self, addr: int) -> None:
        cfg = bytearray(64)
        if self.palette:
            cfg[0] = 1
            struct.pack_into("<8H", cfg, 16, *self.colsb)
            cfg[48:56] = bytes(self.rows)
        ctypes.memmove(addr, bytes(cfg), 64)

    def _tile(self, t: int, what: str) -> tuple[int, int]:
        self._configured(what)
        if self.rows[t] == 0:
            raise EmulationError(f"{what}: tmm{t} is not configured (#UD)")
        return self.rows[t], self.colsb[t]

    def tilezero(self, t: int) -> None:
        self._tile(t, "tilezero")
        self.tiles[t] = 0

    def tileloadd(self, t: int, start: int, stride: int) -> None:
        rows, colsb = self._tile(t, "tileloadd")
        self.tiles[t] = 0
        for r in range(rows):
            self.tiles[t, r, :colsb] = np.frombuffer(
                ctypes.string_at(start + r * stride, colsb), dtype=np.uint8
            )

    def tilestored(self, t: int, start: int, stride: int) -> None:
        rows, colsb = self._tile(t, "tilestored")
        for r in range(rows):
            ctypes.memmove(start + r * stride, self.tiles[t, r, :colsb].tobytes(), colsb)

    @staticmethod
    def _bf16(words: np.ndarray) -> np.ndarray:
        f = (words.astype(np.uint32) << 16).view(np.float32)
        # Denormal inputs are treated as zero (sign kept).
        tiny = (words & 0x7F80) == 0
        return np.where(tiny, np.copysign(np.float32(0), f), f).astype(np.float32)

    @staticmethod
    def _ftz(v: np.ndarray) -> np.ndarray:
        return np.where(np.abs(v) < np.finfo(np.float32).tiny, np.copysign(np.float32(0), v), v)

    def _operands(self, what: str, dst: int, a: int, b: int) -> tuple[int, int, int, int]:
        """The shapes of a tile product C (m × dcols bytes) += A (m × 4k) · B (k × dcols),
        checked as the SDM's #UD conditions: (m, dcols, k, n = dcols / 4)."""
        self._configured(what)
        if len({dst, a, b}) != 3:
            raise EmulationError(f"{what}: tile operands not distinct (#UD)")
        (m, dcols), (ar, acols), (br, bcols) = (self._tile(t, what) for t in (dst, a, b))
        k = acols // 4
        if acols % 4 or dcols % 4 or bcols != dcols or br != k or ar != m:
            raise EmulationError(
                f"{what}: shapes C {m}×{dcols}B, A {ar}×{acols}B, B {br}×{bcols}B (#UD)"
            )
        return m, dcols, k, dcols // 4

    def tdpbf16ps(self, dst: int, a: int, b: int) -> None:
        m, dcols, k, n = self._operands("tdpbf16ps", dst, a, b)
        acols = 4 * k
        with np.errstate(over="ignore", invalid="ignore"):
            av = self._bf16(self.tiles[a, :m, :acols].view(np.uint16))  # m × 2k
            bv = self._bf16(self.tiles[b, :k, :dcols].view(np.uint16))  # k × 2n
            c = self.tiles[dst, :m, :dcols].view(np.float32).copy()  # m × n
            if self.summation == "sequential":
                for kk in range(k):
                    c = self._ftz(c + av[:, 2 * kk, None] * bv[kk, 0::2][None, :])
                    c = self._ftz(c + av[:, 2 * kk + 1, None] * bv[kk, 1::2][None, :])
            else:
                even = np.zeros_like(c)
                odd = np.zeros_like(c)
                for kk in range(k):
                    even = self._ftz(even + av[:, 2 * kk, None] * bv[kk, 0::2][None, :])
                    odd = self._ftz(odd + av[:, 2 * kk + 1, None] * bv[kk, 1::2][None, :])
                c = self._ftz(c + self._ftz(even + odd))
        self.tiles[dst] = 0
        self.tiles[dst, :m, :dcols] = c.astype(np.float32).view(np.uint8).reshape(m, dcols)


    def tdpbsud(self, dst: int, a: int, b: int) -> None:
        """C (i32) += Σ sign-extended A bytes × zero-extended B bytes, in groups of four
        (wrapping i32 sums, as the SDM's pseudocode)."""
        m, dcols, k, n = self._operands("tdpbsud", dst, a, b)
        av = self.tiles[a, :m, : 4 * k].view(np.int8).astype(np.int64)  # m × 4k
        bv = self.tiles[b, :k, :dcols].astype(np.int64)  # k × 4n (unsigned)
        # B[kk][4j + i] pairs with A[m][4kk + i]: B as (4k) × n.
        b2 = bv.reshape(k, n, 4).transpose(0, 2, 1).reshape(4 * k, n)
        c = self.tiles[dst, :m, :dcols].view(np.int32).astype(np.int64) + av @ b2
        c = ((c + 2**31) % 2**32 - 2**31).astype(np.int32)
        self.tiles[dst] = 0
        self.tiles[dst, :m, :dcols] = c.view(np.uint8).reshape(m, dcols)


# bxInstruction_c (bochscpu 0.4.0): the 16-bit internal opcode at byte 16, the 32-bit
# displacement of the memory operand at byte 36 (verified at run time by the probe).
BX_INSN_OPCODE = 16
BX_INSN_DISPL = 36

_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


class DecoderFix:
    """Corrects the disp8*N of decoded VDPBF16PS memory operands (see the module doc).

    The `opcode` hook runs once per decoded instruction, in order, while Bochs decodes a
    trace starting at the current RIP; the instructions' addresses are that RIP plus the
    lengths before them, and every patched instruction's bytes are checked to be EVEX
    VDPBF16PS (62 / map 0F38 / F3 / W0 / 52) with mod = 01 before its displacement is
    rewritten."""

    def __init__(self) -> None:
        self.trace_rip = -1
        self.offset = 0
        self.vdpbf16ps_id: int | None = None  # Bochs's internal opcode number, from the probe
        self.patched = 0
        self.unverified = 0
        self.learning: dict[int, int] | None = None  # address -> opcode number, for the probe

    def on_decode(self, rip: int, insn, length: int) -> None:
        if rip != self.trace_rip:
            self.trace_rip, self.offset = rip, 0
        addr = rip + self.offset
        self.offset += length
        ptr = _capsule_pointer(insn, b"nb_handle")
        opcode_id = ctypes.c_uint16.from_address(ptr + BX_INSN_OPCODE).value
        if self.learning is not None:
            self.learning[addr] = opcode_id
        if self.vdpbf16ps_id is None or opcode_id != self.vdpbf16ps_id:
            return
        code = ctypes.string_at(addr, length)
        # 62, P0 (map 2 = 0F38), P1 (W0, pp = F3), P2 (z L'L b V' aaa), opcode 52, ModRM
        if length < 6 or code[0] != 0x62 or code[1] & 7 != 2 or code[2] & 0x83 != 0x02 \
                or code[4] != 0x52:
            self.unverified += 1
            return
        modrm = code[5]
        if modrm >> 6 != 1:
            return  # register form or 32-bit displacement: nothing compressed
        disp8 = struct.unpack_from("<b", code, 7 if modrm & 7 == 4 else 6)[0]
        broadcast, vl = (code[3] >> 4) & 1, (code[3] >> 5) & 3
        scale = 4 if broadcast else 16 << vl
        ctypes.c_int32.from_address(ptr + BX_INSN_DISPL).value = disp8 * scale
        self.patched += 1


class Emulator:
    """One emulated Sapphire Rapids core that calls functions of this process."""

    def __init__(self, model: int = SAPPHIRE_RAPIDS, stack_size: int = 8 << 20):
        select_cpu_model(model)
        self.pt = PageTables()
        self.amx = Amx()
        self.regions = _host_regions()
        self.sys = _Region(4 * PAGE)  # GDT + TSS, IDT, stubs, variables
        # The exception stubs run on their own stack (IST 1): the interrupted code may keep
        # data below its RSP (the System V red zone), which a frame pushed there would clobber.
        self.ist = _Region(16 * PAGE)
        self.stack = _Region(stack_size)
        for off in range(0, self.sys.size, PAGE):
            self.pt.map(self.sys.addr + off)
        for region in (self.stack, self.ist):
            for off in range(0, region.size, PAGE):
                self.pt.map(region.addr + off)
        self.gdt, self.idt, self.code = self.sys.addr, self.sys.addr + PAGE, self.sys.addr + 2 * PAGE
        self.skip_var = self.sys.addr + 3 * PAGE  # bytes the #UD stub adds to the return RIP
        self.mailbox = self.sys.addr + 3 * PAGE + 0x800
        # GDT: null, 64-bit ring-0 code (0x08), ring-0 data (0x10), 64-bit TSS (0x18, 16
        # bytes); the TSS (104 bytes at GDT + 0x100) holds IST1.
        self.tss = self.gdt + 0x100
        tss_desc = (0x67 | ((self.tss & 0xFFFFFF) << 16) | (0x89 << 40)
                    | (((self.tss >> 24) & 0xFF) << 56))
        self.sys.write(0, struct.pack("<5Q", 0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF,
                                      tss_desc, self.tss >> 32))
        tss = bytearray(104)
        struct.pack_into("<Q", tss, 0x24, (self.ist.addr + self.ist.size - 64) & ~0xF)
        struct.pack_into("<H", tss, 0x66, 104)  # no I/O permission bitmap
        self.sys.write(0x100, bytes(tss))
        self._build_stubs()
        self.session = bochscpu.Session()
        self.session.missing_page_handler = self._missing_page
        self.hook = bochscpu.Hook()
        self.hook.clflush = self._clflush
        self.hook.exception = self._exception
        self.hook.hlt = self._hlt
        self.decoder_fix = DecoderFix()
        self.hook.opcode = self._opcode
        self.stopped: str | None = None
        self.failure: str | None = None
        self.last_exception: tuple[int, int] | None = None
        self.page_faults = 0

    # --- setup -------------------------------------------------------------------------
    def _build_stubs(self) -> None:
        code = bytearray()
        entries = {}

        def out(msg: int, vector: int | None) -> None:
            # [mov eax, vector;] clflush [rip + (mailbox + msg - next rip)]
            nonlocal code
            if vector is not None:
                code += b"\xb8" + struct.pack("<I", vector)
            rip_after = self.code + len(code) + 7
            code += b"\x0f\xae\x3d" + struct.pack("<i", self.mailbox + msg - rip_after)

        self.stop_addr = self.code + len(code)
        out(MSG_STOP, None)  # rax: the return value
        code += b"\xf4\xeb\xfe"  # hlt; jmp $
        for vector in range(32):
            entries[vector] = self.code + len(code)
            if vector == 6:
                # push rax; push rdx; out; mov rax,[rip+skip]; add [rsp+16],rax; pop rdx;
                # pop rax; iretq
                code += b"\x50\x52"
                out(MSG_EXCEPTION, vector)
                rip_after = self.code + len(code) + 7
                code += b"\x48\x8b\x05" + struct.pack("<i", self.skip_var - rip_after)
                code += b"\x48\x01\x44\x24\x10\x5a\x58\x48\xcf"
            elif vector == 14:
                # push rax; push rdx; out; pop rdx; pop rax; add rsp,8 (error code); iretq
                code += b"\x50\x52"
                out(MSG_EXCEPTION, vector)
                code += b"\x5a\x58\x48\x83\xc4\x08\x48\xcf"
            else:
                code += b"\x50\x52"
                out(MSG_FATAL, vector)
                code += b"\xf4\xeb\xfe"
        assert len(code) <= PAGE
        self.sys.write(2 * PAGE, bytes(code))
        idt = bytearray(PAGE)
        for vector, addr in entries.items():
            struct.pack_into(
                "<HHBBHII", idt, 16 * vector,
                addr & 0xFFFF, 0x08, 1, 0x8E, (addr >> 16) & 0xFFFF, addr >> 32, 0,
            )
        self.sys.write(PAGE, bytes(idt))

    def _state(self, rip: int, args: tuple[int, ...]) -> bochscpu.State:
        s = bochscpu.State()
        bochscpu.cpu.set_long_mode(s)
        cr0 = bochscpu.cpu.ControlRegister(s.cr0)
        cr0.MP = True
        s.cr0 = int(cr0)
        cr4 = bochscpu.cpu.ControlRegister(s.cr4)
        cr4.OSFXSR = True
        cr4.OSXMMEXCPT = True
        cr4.OSXSAVE = True
        s.cr4 = int(cr4)
        s.efer = s.efer & ~1  # SCE off: `syscall` raises #UD, reported
        s.cr3 = self.pt.root
        s.xcr0 = 0xE7  # x87, SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM (no AMX: emulated here)

        def seg(selector: int, attr: int, base: int = 0) -> bochscpu.Segment:
            g = bochscpu.Segment()
            g.present = True
            g.selector = selector
            g.base = base
            g.limit = 0xFFFFFFFF
            g.attr = attr
            return g

        s.cs = seg(0x08, 0x209B)
        s.ss = seg(0x10, 0xC093)
        s.ds = seg(0x10, 0xC093)
        s.es = seg(0x10, 0xC093)
        # glibc on x86-64: pthread_self() is the thread pointer, FS base.
        libc = ctypes.CDLL(None)
        libc.pthread_self.restype = ctypes.c_uint64
        s.fs = seg(0, 0xC093, libc.pthread_self())
        s.gs = seg(0, 0xC093)
        gdtr = bochscpu.GlobalSegment()
        gdtr.base, gdtr.limit = self.gdt, 5 * 8 - 1
        s.gdtr = gdtr
        tr = seg(0x18, 0x008B, self.tss)  # busy 64-bit TSS
        tr.limit = 0x67
        s.tr = tr
        idtr = bochscpu.GlobalSegment()
        idtr.base, idtr.limit = self.idt, 32 * 16 - 1
        s.idtr = idtr
        s.rflags = 0x2
        s.mxcsr = 0x1F80
        s.fpcw = 0x37F
        top = (self.stack.addr + self.stack.size - 64) & ~0xF
        rsp = top - 8  # as after a call: rsp + 8 is 16-byte aligned
        ctypes.c_uint64.from_address(rsp).value = self.stop_addr
        s.rsp = rsp
        s.rip = rip
        for reg, value in zip(["rdi", "rsi", "rdx", "rcx", "r8", "r9"], args):
            setattr(s, reg, value)
        return s

    # --- calls ---------------------------------------------------------------------------
    def call(self, fn: int, *args: int) -> int:
        """Runs `fn(args...)` (integer/pointer arguments, at most 6) to its return on the
        emulated core; returns rax."""
        self.stopped = None
        self.failure = None
        self.amx.release()
        self.pt.map(fn)
        self.session.cpu.set_state(self._state(fn, args))
        self.session.run([self.hook])
        if self.failure:
            raise EmulationError(self.failure)
        if self.stopped != "return":
            raise EmulationError(f"emulation stopped: {self.stopped} at rip {self.session.cpu.rip:#x}")
        return self.session.cpu.rax

    def cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        """CPUID on the emulated core."""
        if not hasattr(self, "_cpuid"):
            # push rbx; mov eax,esi; mov ecx,edx; cpuid; mov [rdi],eax; mov [rdi+4],ebx;
            # mov [rdi+8],ecx; mov [rdi+12],edx; pop rbx; ret
            self._cpuid = _Region(2 * PAGE)
            self._cpuid.write(
                0, b"\x53\x89\xf0\x89\xd1\x0f\xa2\x89\x07\x89\x5f\x04\x89\x4f\x08\x89\x57\x0c\x5b\xc3"
            )
            self.pt.map(self._cpuid.addr)
            self.pt.map(self._cpuid.addr + PAGE)
        out = self._cpuid.addr + PAGE
        self.call(self._cpuid.addr, out, leaf, subleaf)
        return struct.unpack("<4I", ctypes.string_at(out, 16))

    def check_vdpbf16ps(self) -> tuple[bool, bool]:
        """Runs `vdpbf16ps zmm0, zmm2, [rsi+0x40]` (disp8*N) twice, before and after enabling
        the decoder correction; returns (raw Bochs correct, corrected correct). Enables the
        correction only if it makes the result right."""
        # vbroadcastss zmm2,[rdx]; vxorps xmm0,xmm0,xmm0; vdpbf16ps zmm0,zmm2,[rsi+0x40];
        # vmovups [rdi],zmm0; vzeroupper; ret
        probe = bytes.fromhex("62f27d481812 c5f857c0 62f26e48524601 62f17c481107 c5f877 c3")
        region = _Region(4 * PAGE)
        for off in range(0, region.size, PAGE):
            self.pt.map(region.addr + off)
        out, w, x = region.addr + 2 * PAGE, region.addr + 3 * PAGE - 0x40, region.addr + 3 * PAGE + 0x400
        weights = np.arange(1, 33, dtype=np.float32) / 8  # exact in bf16
        ctypes.memmove(w + 0x40, (weights.view(np.uint32) >> 16).astype(np.uint16).tobytes(), 64)
        ctypes.memmove(x, np.array([0x3F00, 0x4000], dtype=np.uint16).tobytes(), 4)  # 0.5, 2
        want = weights[0::2] * 0.5 + weights[1::2] * 2.0

        def run(code_addr: int) -> bool:
            ctypes.memmove(code_addr, probe, len(probe))
            self.call(code_addr, out, w, x)
            got = np.frombuffer(ctypes.string_at(out, 64), dtype=np.float32)
            return bool(np.array_equal(got, want))

        fix = self.decoder_fix
        fix.learning = {}
        raw_ok = run(region.addr)
        learned, fix.learning = fix.learning, None
        fix.vdpbf16ps_id = learned.get(region.addr + 10)
        fixed_ok = run(region.addr + PAGE) if fix.vdpbf16ps_id is not None else False
        if not fixed_ok:
            fix.vdpbf16ps_id = None
        fix.patched = 0
        return raw_ok, fixed_ok

    # --- hooks -----------------------------------------------------------------------------
    def _opcode(self, sess: bochscpu.Session, cpu_id: int, insn, opcode: int, length: int,
                is32: bool, is64: bool) -> None:
        try:
            self.decoder_fix.on_decode(sess.cpu.rip, insn, length)
        except Exception as e:  # an exception must not unwind into Bochs
            self.decoder_fix.unverified += 1
            if self.failure is None:
                self.failure = f"decoder hook: {e!r}"

    def _fail(self, sess: bochscpu.Session, why: str) -> None:
        if self.failure is None:
            self.failure = why
        self.stopped = "failure"
        sess.stop()

    def _missing_page(self, gpa: int) -> None:
        raise EmulationError(f"guest-physical page {gpa:#x} not backed")

    def _exception(self, sess: bochscpu.Session, cpu_id: int, vector: int, error: int) -> None:
        self.last_exception = (vector, error)

    def _hlt(self, sess: bochscpu.Session, cpu_id: int) -> None:
        if self.stopped is None:
            self._fail(sess, f"hlt at {sess.cpu.rip:#x}")

    def _clflush(self, sess: bochscpu.Session, cpu_id: int, lin: int, phy: int) -> None:
        msg = lin - self.mailbox
        value = sess.cpu.rax & 0xFF
        try:
            if msg != MSG_STOP and not self.ist.addr <= sess.cpu.rsp < self.ist.addr + self.ist.size:
                raise EmulationError("exception frame not on the IST stack")
            if msg == MSG_STOP:
                self.stopped = "return"
                sess.stop()
            elif msg == MSG_EXCEPTION and value == 14:
                self._page_fault(sess)
            elif msg == MSG_EXCEPTION and value == 6:
                self._invalid_opcode(sess)
            elif msg == MSG_FATAL:
                frame = sess.cpu.rsp + 16
                vector = value
                has_error = vector in (8, 10, 11, 12, 13, 17, 21)
                rip = _u64(frame + (8 if has_error else 0))
                self._fail(sess, f"exception {vector} at rip {rip:#x} ({symbol(rip)})")
            else:
                self._fail(sess, f"clflush at {lin:#x} (rip {sess.cpu.rip:#x})")
        except EmulationError as e:
            self._fail(sess, str(e))

    def _page_fault(self, sess: bochscpu.Session) -> None:
        addr = sess.cpu.cr2
        frame = sess.cpu.rsp + 16
        error, rip = _u64(frame), _u64(frame + 8)
        page = addr & ~(PAGE - 1)
        for attempt in range(2):
            for lo, hi, perms in self.regions:
                if lo <= page < hi and perms[0] == "r":
                    # Map the region around the page (up to 4 MiB each way).
                    start = max(lo, page - (4 << 20))
                    end = min(hi, page + (4 << 20))
                    for va in range(start, end, PAGE):
                        self.pt.map(va, writable=perms[1] == "w")
                    self.page_faults += 1
                    return
            self.regions = _host_regions()
        raise EmulationError(
            f"page fault at {addr:#x} (error {error:#x}) from rip {rip:#x} ({symbol(rip)})"
        )

    def _invalid_opcode(self, sess: bochscpu.Session) -> None:
        cpu = sess.cpu
        frame = cpu.rsp + 16
        rip = _u64(frame)
        regs = {name: getattr(cpu, name) for name in _GPR}
        regs["rax"] = _u64(cpu.rsp + 8)
        regs["rdx"] = _u64(cpu.rsp)
        regs["rsp"] = _u64(frame + 24)
        code = ctypes.string_at(rip, 16)
        length = self._execute_amx(code, regs, rip)
        ctypes.c_uint64.from_address(self.skip_var).value = length

    def _execute_amx(self, code: bytes, regs: dict[str, int], rip: int) -> int:
        """Decodes and runs one AMX instruction at `rip`; returns its length."""
        if code[0] != 0xC4:
            raise EmulationError(f"invalid opcode at {rip:#x}: {code[:8].hex(' ')}")
        p1, p2, op, modrm = code[1], code[2], code[3], code[4]
        r_ext, x_ext, b_ext = (~p1 >> 7) & 1, (~p1 >> 6) & 1, (~p1 >> 5) & 1
        mmmmm, w, vvvv, vex_l, pp = p1 & 0x1F, p2 >> 7, (~p2 >> 3) & 0xF, (p2 >> 2) & 1, p2 & 3
        if mmmmm != 2 or w or vex_l or op not in (0x49, 0x4B, 0x5C, 0x5E):
            raise EmulationError(f"invalid opcode at {rip:#x}: {code[:8].hex(' ')}")
        mod, reg, rm = modrm >> 6, ((modrm >> 3) & 7) | (r_ext << 3), (modrm & 7) | (b_ext << 3)
        length = 5

        def memory() -> tuple[int, int, int]:
            """(base + disp, index * scale, length) of the memory operand."""
            nonlocal length
            base_reg, index_val = rm, 0
            if modrm & 7 == 4:
                sib = code[5]
                length += 1
                scale, index = sib >> 6, ((sib >> 3) & 7) | (x_ext << 3)
                base_reg = (sib & 7) | (b_ext << 3)
                if index != 4:
                    index_val = regs[_GPR[index]] << scale
                if mod == 0 and sib & 7 == 5:
                    disp = struct.unpack_from("<i", code, length)[0]
                    length += 4
                    return (disp & (2**64 - 1), index_val, length)
            elif mod == 0 and modrm & 7 == 5:
                disp = struct.unpack_from("<i", code, length)[0]
                length += 4
                return ((rip + length + disp) & (2**64 - 1), 0, length)
            disp = 0
            if mod == 1:
                disp = struct.unpack_from("<b", code, length)[0]
                length += 1
            elif mod == 2:
                disp = struct.unpack_from("<i", code, length)[0]
                length += 4
            return ((regs[_GPR[base_reg]] + disp) & (2**64 - 1), index_val, length)

        amx = self.amx
        if op == 0x49 and mod == 3:
            if pp == 0 and modrm == 0xC0 and vvvv == 0:
                amx._count("tilerelease")
                amx.release()
                return length
            if pp == 3 and rm & 7 == 0 and reg < 8 and vvvv == 0:
                amx._count("tilezero")
                amx.tilezero(reg)
                return length
        elif op == 0x49 and reg & 7 == 0 and pp in (0, 1) and vvvv == 0:
            base, index, length = memory()
            addr = (base + index) & (2**64 - 1)
            if pp == 0:
                amx._count("ldtilecfg")
                amx.ldtilecfg(addr)
            else:
                amx._count("sttilecfg")
                amx.sttilecfg(addr)
            return length
        elif op == 0x4B and mod != 3 and modrm & 7 == 4 and reg < 8 and vvvv == 0:
            start, stride, length = memory()
            if pp in (3, 1):  # tileloadd (F2), tileloaddt1 (66)
                amx._count("tileloadd")
                amx.tileloadd(reg, start, stride)
                return length
            if pp == 2:
                amx._count("tilestored")
                amx.tilestored(reg, start, stride)
                return length
        elif op == 0x5C and mod == 3 and pp == 2 and reg < 8 and rm < 8 and vvvv < 8:
            amx._count("tdpbf16ps")
            amx.tdpbf16ps(reg, rm, vvvv)
            return length
        elif op == 0x5E and mod == 3 and pp == 2 and reg < 8 and rm < 8 and vvvv < 8:
            amx._count("tdpbsud")
            amx.tdpbsud(reg, rm, vvvv)
            return length
        raise EmulationError(f"unsupported AMX form at {rip:#x}: {code[:8].hex(' ')}")
