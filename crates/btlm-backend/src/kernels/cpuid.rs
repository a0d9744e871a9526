//! What CPUID says about this CPU beyond its features: vendor and family, for the kernel
//! choices that differ between cores with the same instructions.

/// AMD's CPU family of Zen 5 cores (CPUID leaf 1, [`family`]).
const ZEN5_FAMILY: u32 = 0x1a;

/// Whether a CPU of this vendor ([`vendor_is_amd`]) and family ([`family`]) is an AMD Zen 5
/// or later, where the kernels' measured choices differ from the other CPUs'.
pub fn zen5_or_later(amd: bool, family: Option<u32>) -> bool {
    amd && family.is_some_and(|f| f >= ZEN5_FAMILY)
}

/// Whether this CPU's vendor string (CPUID leaf 0) is AMD's `AuthenticAMD`.
// `__cpuid` is a safe function in newer Rust releases, unsafe in older ones.
#[allow(unused_unsafe)]
pub fn vendor_is_amd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: CPUID is available on every x86-64 CPU.
        let vendor = unsafe { std::arch::x86_64::__cpuid(0) };
        (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163)
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// This CPU's family as CPUID leaf 1 encodes it (the base family, plus the extended one
/// when the base is 15): AMD's Zen 3 and Zen 4 are 0x19, Zen 5 0x1A; Intel's cores 6.
#[allow(unused_unsafe)]
pub fn family() -> Option<u32> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: CPUID is available on every x86-64 CPU.
        let eax = unsafe { std::arch::x86_64::__cpuid(1) }.eax;
        Some(family_of(eax))
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// The family encoded in CPUID leaf 1's `eax`.
fn family_of(eax: u32) -> u32 {
    let base = (eax >> 8) & 0xf;
    if base == 0xf {
        base + ((eax >> 20) & 0xff)
    } else {
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_decode_as_the_vendors_number_them() {
        // Signatures (leaf 1 eax) of a Zen 4 (Genoa), a Zen 5 (Turin) and a Sapphire Rapids.
        assert_eq!(family_of(0x00a1_0f11), 0x19);
        assert_eq!(family_of(0x00b0_0f21), 0x1a);
        assert_eq!(family_of(0x0008_06f8), 6);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn this_cpu_is_a_known_kind() {
        let family = family().expect("x86-64 CPUs report a family");
        if vendor_is_amd() {
            assert!(
                family >= 0x15,
                "an AMD CPU with AVX2 or later: family {family:#x}"
            );
        } else {
            assert!(family == 6 || family >= 0x10, "family {family:#x}");
        }
    }
}
