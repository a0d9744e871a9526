"""Runs the AVX-512 and AMX kernels of prompting-btlm-backend on an emulated Sapphire Rapids
core against the scalar reference, one case per line (see check-kernels-emulated.sh).

Usage: check_kernels.py LIB.so [--path avx512|amx|all] [--quick] [--filter TEXT]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time

from spr_emulator import BRAND, Emulator, EmulationError

FORMATS = ["f32", "f16", "bf16", "q8_0", "q4k"]  # WeightFormat::ALL order
# The shapes and row counts of `every_path_matches_the_scalar_reference` (tests.rs).
SHAPES = [(1, 1), (17, 33), (40, 300), (16, 512), (35, 6826)]
ROWS = [1, 2, 3, 5, 8, 9, 16, 17]
# The cases of `amx_tiles_compute_the_bf16_product` (n_out, n_in, rows).
AMX_CASES = [(1, 1, 1), (17, 33, 16), (40, 300, 23), (16, 512, 6), (35, 6826, 33), (48, 257, 37)]
AMX_FORMATS = ["f16", "bf16", "q8_0", "q4k"]


def avx512_cases(quick: bool):
    seed = 1
    for fmt in FORMATS:
        for n_out, n_in in SHAPES:
            for rows in ROWS:
                if n_in > 1000 and rows > 3 and rows != 17:
                    continue
                if quick and rows not in (1, 8, 9, 17):
                    continue
                seed += 1
                yield ("avx512", fmt, n_out, n_in, rows, seed, 0)
    # `extreme_quantized_values_do_not_saturate`: every weight ±1, every activation ±1.
    for fmt in ("q4k", "q8_0"):
        for kind in (1, 2):
            yield ("avx512", fmt, 32, 1024, 5, 0, kind)


def amx_cases(quick: bool):
    seed = 1000
    for fmt in AMX_FORMATS:
        for n_out, n_in, rows in AMX_CASES:
            if quick and n_in > 1000:
                continue
            seed += 1
            yield ("amx", fmt, n_out, n_in, rows, seed, 0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("lib")
    ap.add_argument("--path", choices=["avx512", "amx", "all"], default="all")
    ap.add_argument("--quick", action="store_true", help="fewer row counts, no 6826-input AMX cases")
    ap.add_argument("--filter", default="", help="only cases whose name contains this")
    args = ap.parse_args()

    lib = ctypes.CDLL(args.lib)
    lib.emu_case_new.restype = ctypes.c_void_p
    lib.emu_case_new.argtypes = [ctypes.c_uint32] + [ctypes.c_size_t] * 3 + [ctypes.c_uint64, ctypes.c_uint32]
    for name in ("emu_case_reset", "emu_case_free"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    lib.emu_case_check.restype = ctypes.c_size_t
    lib.emu_case_check.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_char_p, ctypes.c_size_t]
    addr = lambda name: ctypes.cast(getattr(lib, name), ctypes.c_void_p).value

    emu = Emulator()
    t0 = time.time()
    # The CPU the kernels see: std_detect's view, first thing in this process.
    brand = b"".join(struct_bytes(emu.cpuid(leaf)) for leaf in (0x80000002, 0x80000003, 0x80000004))
    brand = brand.split(b"\0")[0].strip()
    l7 = emu.cpuid(7, 0)
    l7_1 = emu.cpuid(7, 1)
    report = feature_report(emu, addr("emu_feature_report"))
    print(f"emulated CPU: {brand.decode()}  (cpuid 7.0 ebx={l7[1]:#010x} ecx={l7[2]:#010x} "
          f"edx={l7[3]:#010x}, 7.1 eax={l7_1[0]:#010x})")
    ok_detect = report >= 0 and bool(report & 1) and bool(report & 2)
    print(f"{'PASS' if ok_detect else 'FAIL'} detect: avx512 supported={bool(report & 1)}, "
          f"KernelPath::detect() = avx512: {bool(report & 2)}, "
          f"AMX in CPUID/XCR0: {bool(report & 4)} (bochscpu has no AMX; emulated by spr_emulator.py)")
    if not brand.startswith(BRAND):
        print(f"FAIL: expected the Sapphire Rapids model ({BRAND.decode()}), got {brand!r}")
        return 1

    raw_ok, fixed_ok = emu.check_vdpbf16ps()
    print(f"{'PASS' if fixed_ok else 'FAIL'} emulator: VDPBF16PS with a disp8 memory operand "
          f"{'correct' if raw_ok else 'wrong in Bochs (disp8*4 instead of *64)'}"
          f"{', corrected at decode' if fixed_ok and not raw_ok else ''}")
    if not fixed_ok:
        print("FAIL: the emulator's VDPBF16PS cannot be trusted; bf16 results would be wrong")
        return 1

    cases = []
    if args.path in ("avx512", "all"):
        cases += list(avx512_cases(args.quick))
    if args.path in ("amx", "all"):
        cases += list(amx_cases(args.quick))
    failed = 0 if ok_detect else 1
    passed = 0
    msg = ctypes.create_string_buffer(512)
    for path, fmt, n_out, n_in, rows, seed, kind in cases:
        kind_name = ["", " ±1 (+)", " ±1 (−)"][kind]
        name = f"{path} {fmt} {n_out}×{n_in} rows {rows}{kind_name}"
        if args.filter and args.filter not in name:
            continue
        case = lib.emu_case_new(FORMATS.index(fmt), n_out, n_in, rows, seed, kind)
        start = time.time()
        try:
            lib.emu_case_reset(case)
            emu.call(addr(f"emu_case_run_{path}"), case)
            bad = lib.emu_case_check(case, 1 if path == "amx" else 0, msg, len(msg))
            detail = f"{bad} of {rows * n_out} outputs off, first {msg.value.decode()}" if bad else ""
        except EmulationError as e:
            bad, detail = -1, f"emulation: {e}"
        finally:
            lib.emu_case_free(case)
        took = time.time() - start
        if bad == 0:
            passed += 1
            print(f"PASS {name} ({took:.1f} s)")
        else:
            failed += 1
            print(f"FAIL {name} ({took:.1f} s): {detail}")
        sys.stdout.flush()
    fix = emu.decoder_fix
    print(f"{passed} passed, {failed} failed in {time.time() - t0:.0f} s; "
          f"AMX instructions emulated: {emu.amx.executed or 'none'}; "
          f"VDPBF16PS displacements corrected: {fix.patched}, unverified: {fix.unverified}")
    if fix.unverified:
        failed += 1
        print("FAIL: some VDPBF16PS instructions could not be checked for the Bochs defect")
    sys.stdout.flush()
    # Skip interpreter teardown: bochscpu's objects crash at exit (nanobind leak checks).
    os._exit(1 if failed else 0)


def feature_report(emu: Emulator, fn: int) -> int:
    """The crate's feature checks on the emulated CPU, in a forked child: `std_detect` caches
    what it finds, and this process's native code must keep seeing the host's features."""
    pid = os.fork()
    if pid == 0:
        try:
            code = emu.call(fn) & 0x7F
        except EmulationError as e:
            print(f"feature report: {e}")
            code = 0x80
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return code if 0 <= code < 0x80 else -1


def struct_bytes(regs: tuple[int, int, int, int]) -> bytes:
    return b"".join(r.to_bytes(4, "little") for r in regs)


if __name__ == "__main__":
    sys.exit(main())
