//! The Intel MultiProcessor table: how a guest without ACPI learns its CPUs, the IOAPIC and the
//! interrupt wiring.
//!
//! Linux scans the last KiB of base memory for the floating pointer ("_MP_"), which points at the
//! configuration table ("PCMP") right behind it. One processor entry per vCPU (APIC id = vCPU
//! index), one ISA bus, one IOAPIC with every pin wired 1:1 to the same ISA IRQ except IRQ 0,
//! which lands on pin 2 as on a PC (that is where KVM's in-kernel PIT delivers it), and the
//! local interrupts ExtINT → LINT0, NMI → LINT1.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::layout::{APIC_START, EBDA_START, HIMEM_START, IOAPIC_START, IRQ_MAX};

const MPF_SIZE: usize = 16;
const MPC_HEADER_SIZE: usize = 44;
const CPU_ENTRY_SIZE: usize = 20;
const SMALL_ENTRY_SIZE: usize = 8;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;

const MP_SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
/// Family 6 signature; the kernel only prints it.
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1:EDX bits the entry claims: FPU and APIC.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const IRQ_TYPE_INT: u8 = 0;
const IRQ_TYPE_NMI: u8 = 1;
const IRQ_TYPE_EXTINT: u8 = 3;
/// Largest vCPU count whose APIC ids (and the IOAPIC's id after them) fit the xAPIC's 8 bits.
pub const MAX_CPUS: u8 = 254;

/// Errors from building the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Zero vCPUs, or more than [`MAX_CPUS`].
    #[error("mp table cannot describe {0} vcpus")]
    CpuCount(usize),
    /// The table does not fit between the EBDA and 1 MiB.
    #[error("mp table too large")]
    TooLarge,
    /// Writing it to guest memory failed.
    #[error("cannot write the mp table")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// The IOAPIC's id: the first id after the vCPUs' APIC ids.
pub fn ioapic_id(num_cpus: u8) -> u8 {
    num_cpus
}

/// The bytes of the floating pointer followed by the configuration table, for a table placed at
/// guest address `start`.
pub fn mptable_bytes(num_cpus: usize, start: u64) -> Result<Vec<u8>, MptableError> {
    let cpus = u8::try_from(num_cpus)
        .ok()
        .filter(|&n| (1..=MAX_CPUS).contains(&n))
        .ok_or(MptableError::CpuCount(num_cpus))?;
    let mpc_start = start + MPF_SIZE as u64;

    let mut mpf = Vec::with_capacity(MPF_SIZE);
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&(mpc_start as u32).to_le_bytes());
    mpf.push(1); // length in 16-byte units
    mpf.push(MP_SPEC_REV);
    mpf.push(0); // checksum, filled below
    mpf.extend_from_slice(&[0; 5]); // feature bytes: 0 = a configuration table is present
    mpf[10] = checksum(&mpf);

    let entry_count = u16::from(cpus) + 2 + IRQ_MAX as u16 + 2;
    let small_entries = usize::from(entry_count) - usize::from(cpus);
    let mut entries =
        Vec::with_capacity(usize::from(cpus) * CPU_ENTRY_SIZE + small_entries * SMALL_ENTRY_SIZE);
    for id in 0..cpus {
        entries.push(ENTRY_PROCESSOR);
        entries.push(id);
        entries.push(APIC_VERSION);
        entries.push(CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 });
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    let ioapic = ioapic_id(cpus);
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    for irq in (0..=IRQ_MAX as u8).filter(|&irq| irq != 2) {
        let pin = if irq == 0 { 2 } else { irq };
        entries.extend_from_slice(&[ENTRY_INTSRC, IRQ_TYPE_INT, 0, 0, 0, irq, ioapic, pin]);
    }
    entries.extend_from_slice(&[ENTRY_LINTSRC, IRQ_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LINTSRC, IRQ_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);

    let length = MPC_HEADER_SIZE + entries.len();
    let mut mpc = Vec::with_capacity(length);
    mpc.extend_from_slice(b"PCMP");
    mpc.extend_from_slice(&(length as u16).to_le_bytes());
    mpc.push(MP_SPEC_REV);
    mpc.push(0); // checksum, filled below
    mpc.extend_from_slice(b"BULKHEAD");
    mpc.extend_from_slice(b"MICROVM     ");
    mpc.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    mpc.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    mpc.extend_from_slice(&entry_count.to_le_bytes());
    mpc.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    mpc.extend_from_slice(&0u32.to_le_bytes()); // extended table length + checksum + reserved
    mpc.extend_from_slice(&entries);
    mpc[7] = checksum(&mpc);

    let mut out = mpf;
    out.extend_from_slice(&mpc);
    if start + out.len() as u64 > HIMEM_START {
        return Err(MptableError::TooLarge);
    }
    Ok(out)
}

/// Writes the MP table for `num_cpus` vCPUs at the start of the EBDA.
pub fn write_mptable<M: GuestMemory>(mem: &M, num_cpus: usize) -> Result<(), MptableError> {
    let bytes = mptable_bytes(num_cpus, EBDA_START)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MptableError::Write)
}

/// The byte that makes `bytes` (with it in the checksum slot, currently 0) sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn split(bytes: &[u8]) -> (&[u8], &[u8]) {
        bytes.split_at(MPF_SIZE)
    }

    #[test]
    fn checksums_and_pointers() {
        for cpus in [1usize, 2, 8, 254] {
            let t = mptable_bytes(cpus, EBDA_START).unwrap();
            let (mpf, mpc) = split(&t);
            assert_eq!(&mpf[..4], b"_MP_");
            assert_eq!(sum(mpf), 0, "mpf checksum, {cpus} cpus");
            let ptr = u32::from_le_bytes(mpf[4..8].try_into().unwrap());
            assert_eq!(u64::from(ptr), EBDA_START + MPF_SIZE as u64);
            assert_eq!(&mpc[..4], b"PCMP");
            let len = u16::from_le_bytes(mpc[4..6].try_into().unwrap()) as usize;
            assert_eq!(len, mpc.len());
            assert_eq!(sum(mpc), 0, "mpc checksum, {cpus} cpus");
            let count = u16::from_le_bytes(mpc[34..36].try_into().unwrap()) as usize;
            let expected_len =
                MPC_HEADER_SIZE + cpus * CPU_ENTRY_SIZE + (count - cpus) * SMALL_ENTRY_SIZE;
            assert_eq!(len, expected_len);
        }
    }

    #[test]
    fn one_processor_entry_per_cpu() {
        let t = mptable_bytes(3, EBDA_START).unwrap();
        let mpc = &split(&t).1[MPC_HEADER_SIZE..];
        for id in 0..3u8 {
            let e = &mpc[id as usize * CPU_ENTRY_SIZE..][..CPU_ENTRY_SIZE];
            assert_eq!(e[0], ENTRY_PROCESSOR);
            assert_eq!(e[1], id, "apic id");
            let bsp = e[3] & CPU_BOOTPROCESSOR != 0;
            assert_eq!(bsp, id == 0);
            assert_ne!(e[3] & CPU_ENABLED, 0);
        }
        let rest = &mpc[3 * CPU_ENTRY_SIZE..];
        assert_eq!(rest[0], ENTRY_BUS);
        assert_eq!(&rest[8..12], &[ENTRY_IOAPIC, 3, IOAPIC_VERSION, 1]);
        // IRQ 0 goes to pin 2 and nothing else claims pin 2.
        let intsrc: Vec<&[u8]> = rest[16..]
            .chunks(8)
            .filter(|e| e[0] == ENTRY_INTSRC)
            .collect();
        assert_eq!(intsrc.len(), IRQ_MAX as usize);
        assert_eq!((intsrc[0][5], intsrc[0][7]), (0, 2));
        assert_eq!(intsrc.iter().filter(|e| e[7] == 2).count(), 1);
        let lint: Vec<&[u8]> = rest[16..]
            .chunks(8)
            .filter(|e| e[0] == ENTRY_LINTSRC)
            .collect();
        assert_eq!(lint.len(), 2);
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        assert!(matches!(
            mptable_bytes(0, EBDA_START),
            Err(MptableError::CpuCount(0))
        ));
        assert!(matches!(
            mptable_bytes(255, EBDA_START),
            Err(MptableError::CpuCount(255))
        ));
        assert!(matches!(
            mptable_bytes(254, HIMEM_START - 64),
            Err(MptableError::TooLarge)
        ));
    }

    #[test]
    fn writes_into_guest_memory() {
        let mem =
            crate::memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        write_mptable(&mem, 2).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(EBDA_START)).unwrap();
        assert_eq!(&sig, b"_MP_");
    }
}
