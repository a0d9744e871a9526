"""Runs the AVX-512 and AMX kernels of prompting-btlm-backend on an emulated Sapphire Rapids
core against the scalar reference, one case per line (see check-kernels-emulated.sh), then
the AVX-512 cases again on an emulated Ice Lake (AVX-512 VNNI without BF16: bf16 weights
take the AVX2 bf16 kernel there).

Usage: check_kernels.py LIB.so [--path avx512|amx|all] [--quick] [--filter TEXT]
                        [--model NAME]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time

import subprocess

from spr_emulator import BRAND, OTHER_MODELS, SAPPHIRE_RAPIDS, Emulator, EmulationError

# The model without AVX512-BF16 the AVX-512 cases also run on (by default, after SPR).
NO_BF16_MODEL = "corei7_icelake_u"

FORMATS = ["f32", "f16", "bf16", "q8_0", "q4k"]  # WeightFormat::ALL order
# The shapes and row counts of `every_path_matches_the_scalar_reference` (tests.rs).
SHAPES = [(1, 1), (17, 33), (40, 300), (16, 512), (35, 6826)]
# More odd shapes (not with --quick): one q4k superblock, one past it, BTLM's n_embd, 1000.
MORE_SHAPES = [(3, 256), (31, 257), (64, 2560), (48, 1000)]
ROWS = [1, 2, 3, 5, 8, 9, 16, 17]
# The cases of `amx_tiles_compute_the_bf16_product` (n_out, n_in, rows).
AMX_CASES = [(1, 1, 1), (17, 33, 16), (40, 300, 23), (16, 512, 6), (35, 6826, 33), (48, 257, 37)]
AMX_FORMATS = ["f16", "bf16", "q8_0", "q4k"]
MORE_AMX_CASES = [(33, 2560, 40), (64, 1000, 16), (20, 64, 100)]


def avx512_cases(quick: bool):
    seed = 1
    for fmt in FORMATS:
        for n_out, n_in in SHAPES + ([] if quick else MORE_SHAPES):
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


def amx_cases(quick: bool, summations: list[str]):
    for summation in summations:
        seed = 1000
        for fmt in AMX_FORMATS:
            for n_out, n_in, rows in AMX_CASES + ([] if quick else MORE_AMX_CASES):
                seed += 1
                if quick and n_in > 1000:
                    continue
                yield (f"amx/{summation}", fmt, n_out, n_in, rows, seed, 0)


def amx8_cases(quick: bool):
    """q4k on the AMX-INT8 kernels: the AMX shapes (a partial last block of 16 rows, n_inner's
    q4k tail) and the extreme sums, checked against the scalar reference as the tile kernels
    are (they compute the same integer sums)."""
    seed = 3000
    for n_out, n_in, rows in AMX_CASES + ([] if quick else MORE_AMX_CASES):
        seed += 1
        if quick and n_in > 1000:
            continue
        yield ("amx8", "q4k", n_out, n_in, rows, seed, 0)
    for kind in (1, 2):
        yield ("amx8", "q4k", 32, 1024, 21, 0, kind)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("lib")
    ap.add_argument("--path", choices=["avx512", "amx", "all"], default="all")
    ap.add_argument("--quick", action="store_true", help="fewer row counts, no 6826-input AMX cases")
    ap.add_argument("--filter", default="", help="only cases whose name contains this")
    ap.add_argument("--detect-model", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--model", choices=["sapphire_rapids"] + list(OTHER_MODELS.values()),
                    default="sapphire_rapids",
                    help="the emulated CPU (other than sapphire_rapids: AVX-512 cases only; "
                         f"sapphire_rapids also runs them on {NO_BF16_MODEL} after its own)")
    ap.add_argument("--amx-sum", choices=["sequential", "lanes", "both"], default="both",
                    help="TDPBF16PS summation order(s) to emulate (see spr_emulator.Amx)")
    args = ap.parse_args()

    lib = ctypes.CDLL(args.lib)
    lib.emu_case_new.restype = ctypes.c_void_p
    lib.emu_case_new.argtypes = [ctypes.c_uint32] + [ctypes.c_size_t] * 3 + [ctypes.c_uint64, ctypes.c_uint32]
    for name in ("emu_case_reset", "emu_case_free"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    lib.emu_case_check.restype = ctypes.c_size_t
    lib.emu_case_run_avx512.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.emu_case_check.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_char_p, ctypes.c_size_t]
    addr = lambda name: ctypes.cast(getattr(lib, name), ctypes.c_void_p).value

    if args.detect_model is not None:
        return detect_on_model(args.detect_model, addr("emu_feature_report"))
    spr = args.model == "sapphire_rapids"
    if not spr and args.path != "avx512":
        print(f"FAIL: --model {args.model} runs the AVX-512 cases only (--path avx512)")
        return 1
    detect_ok = True
    if spr and args.path == "all" and not args.filter:
        for model, name in OTHER_MODELS.items():
            out = subprocess.run([sys.executable, __file__, args.lib, "--detect-model", str(model)],
                                 capture_output=True, text=True)
            print(out.stdout.strip() or f"FAIL detect on {name}: {out.stderr.strip()[-300:]}")
            detect_ok &= out.returncode == 0

    model = SAPPHIRE_RAPIDS if spr else next(k for k, v in OTHER_MODELS.items() if v == args.model)
    emu = Emulator(model=model)
    t0 = time.time()
    # The CPU the kernels see: std_detect's view, first thing in this process.
    brand = b"".join(struct_bytes(emu.cpuid(leaf)) for leaf in (0x80000002, 0x80000003, 0x80000004))
    brand = brand.split(b"\0")[0].strip()
    l7 = emu.cpuid(7, 0)
    l7_1 = emu.cpuid(7, 1)
    report = feature_report(emu, addr("emu_feature_report"))
    print(f"emulated CPU: {brand.decode()}  (cpuid 7.0 ebx={l7[1]:#010x} ecx={l7[2]:#010x} "
          f"edx={l7[3]:#010x}, 7.1 eax={l7_1[0]:#010x})")
    ok_detect = report >= 0 and bool(report & 1) and bool(report & 2) \
        and expected_path(emu) == "avx512"
    print(f"{'PASS' if ok_detect else 'FAIL'} detect: avx512 supported={bool(report & 1)}, "
          f"KernelPath::detect() = avx512: {bool(report & 2)}, "
          f"AMX in CPUID/XCR0: {bool(report & 4)} (bochscpu has no AMX; emulated by spr_emulator.py)")
    if brand.startswith(BRAND) != spr:
        print(f"FAIL: expected the {args.model} model, got {brand!r}")
        return 1
    # AVX512-BF16 (CPUID 7.1 EAX bit 5): without it the AVX-512 path runs bf16 weights on
    # the AVX2 bf16 kernel; a VDPBF16PS would fault (#UD) and fail its case.
    has_bf16 = bool(l7_1[0] >> 5 & 1)
    print(f"AVX512-BF16: {'yes' if has_bf16 else 'no (bf16 weights: AVX2 kernel)'}")

    raw_ok, fixed_ok = emu.check_vdpbf16ps() if has_bf16 else (True, True)
    if has_bf16:
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
        sums = ["sequential", "lanes"] if args.amx_sum == "both" else [args.amx_sum]
        cases += list(amx_cases(args.quick, sums))
        cases += list(amx8_cases(args.quick))
    failed = 0 if ok_detect and detect_ok else 1
    passed = 0
    msg = ctypes.create_string_buffer(512)
    for path, fmt, n_out, n_in, rows, seed, kind in cases:
        kind_name = ["", " ±1 (+)", " ±1 (−)"][kind]
        name = f"{path} {fmt} {n_out}×{n_in} rows {rows}{kind_name}"
        if args.filter and args.filter not in name:
            continue
        case = lib.emu_case_new(FORMATS.index(fmt), n_out, n_in, rows, seed, kind)
        start = time.time()
        kernel = path.split("/")[0]
        if kernel == "amx":
            emu.amx.summation = path.split("/")[1]
        try:
            lib.emu_case_reset(case)
            if kernel == "amx":
                emu.call(addr("emu_case_run_amx"), case)
            elif kernel == "amx8":
                emu.call(addr("emu_case_run_amx8"), case)
            else:
                emu.call(addr("emu_case_run_avx512"), case, int(has_bf16))
            bad = lib.emu_case_check(case, 1 if kernel == "amx" else 0, msg, len(msg))
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
    if spr and args.path in ("avx512", "all"):
        # The AVX-512 cases on a CPU without AVX512-BF16 (Ice Lake, Cascade Lake class).
        cmd = [sys.executable, __file__, args.lib, "--model", NO_BF16_MODEL, "--path", "avx512"]
        cmd += (["--quick"] if args.quick else []) + (["--filter", args.filter] if args.filter else [])
        print(f"--- AVX-512 cases on {NO_BF16_MODEL} (no AVX512-BF16) ---")
        sys.stdout.flush()
        failed += subprocess.run(cmd).returncode != 0
    # Skip interpreter teardown: bochscpu's objects crash at exit (nanobind leak checks).
    os._exit(1 if failed else 0)


PATHS = ["amx", "avx512", "avx2", "scalar"]  # KernelPath::ALL


def expected_path(emu: Emulator) -> str:
    """The path the kernels should choose, from CPUID alone (XCR0 enables every vector
    state here): avx2 needs AVX2, FMA and F16C; avx512 those and AVX-512 F, BW, VL and VNNI
    (not BF16: without it bf16 weights take the AVX2 kernel)."""
    l1, l7 = emu.cpuid(1), emu.cpuid(7, 0)
    bit = lambda reg, n: bool(reg >> n & 1)
    avx2 = bit(l7[1], 5) and bit(l1[2], 12) and bit(l1[2], 29)
    if avx2 and all(bit(l7[1], n) for n in (16, 30, 31)) and bit(l7[2], 11):
        return "avx512"
    if avx2:
        return "avx2"
    return "scalar"


def detect_on_model(model: int, fn: int) -> int:
    """Prints what `KernelPath::detect` chooses on another emulated Intel model; exit status
    0 if that is the path its CPUID calls for."""
    emu = Emulator(model=model)
    brand = b"".join(struct_bytes(emu.cpuid(leaf)) for leaf in (0x80000002, 0x80000003, 0x80000004))
    brand = brand.split(b"\0")[0].strip().decode()
    want = expected_path(emu)
    report = emu.call(fn)
    got = PATHS[report >> 3 & 3]
    ok = got == want
    print(f"{'PASS' if ok else 'FAIL'} detect on {OTHER_MODELS.get(model, model)} ({brand}): "
          f"detect() = {got}, CPUID calls for {want}")
    sys.stdout.flush()
    os._exit(0 if ok else 1)


def feature_report(emu: Emulator, fn: int) -> int:
    """The crate's feature checks on the emulated CPU, in a forked child: `std_detect` caches
    what it finds, and this process's native code must keep seeing the host's features."""
    pid = os.fork()
    if pid == 0:
        try:
            code = emu.call(fn) & 0x1F
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
