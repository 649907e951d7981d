//! Direct kernel boot (the Linux x86_64 64-bit boot protocol): what goes into guest memory
//! before the first instruction, and what state each vCPU starts in.
//!
//! The guest-memory side ([`configure_system`]) writes the command line, the zero page with the
//! e820 map, the MP table and the boot GDT/IDT/page tables. The vCPU side ([`configure_vcpu`])
//! sets CPUID, MSRs, long-mode registers, the FPU and the LAPIC. Each piece is a small module
//! with its own unit tests.

pub mod cmdline;
pub mod cpuid;
pub mod gdt;
pub mod loader;
pub mod mptable;
pub mod msr;
pub mod paging;
pub mod params;
pub mod regs;

use kvm_bindings::{kvm_msr_entry, CpuId};
use kvm_ioctls::VcpuFd;
use linux_loader::cmdline::Cmdline;

use crate::memory::GuestMemoryMmap;
use loader::LoadedKernel;

/// Errors from preparing the boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Kernel or initrd loading.
    #[error(transparent)]
    Loader(#[from] loader::LoaderError),
    /// The command line.
    #[error(transparent)]
    Cmdline(#[from] cmdline::CmdlineError),
    /// The zero page.
    #[error(transparent)]
    Params(#[from] params::ParamsError),
    /// The MP table.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// Registers and boot tables.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// MSRs.
    #[error(transparent)]
    Msr(#[from] msr::MsrError),
    /// KVM refused the CPUID table.
    #[error("cannot set cpuid")]
    SetCpuid(#[source] kvm_ioctls::Error),
}

/// Everything about the loaded system that the guest-memory structures describe.
pub struct SystemSetup<'a> {
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap,
    /// Where the kernel was loaded.
    pub kernel: &'a LoadedKernel,
    /// The final command line (devices included).
    pub cmdline: &'a Cmdline,
    /// Where the initrd was loaded, if any.
    pub initrd: Option<(u64, u32)>,
    /// Guest RAM size in bytes.
    pub mem_bytes: u64,
    /// Number of vCPUs.
    pub num_cpus: usize,
}

/// Writes the command line, zero page, MP table and boot tables; returns CR3 for the vCPUs.
pub fn configure_system(setup: &SystemSetup<'_>) -> Result<u64, BootError> {
    let cmdline_len = cmdline::write(setup.mem, setup.cmdline)?;
    let zero_page = params::zero_page(&params::ZeroPageInputs {
        setup_header: setup.kernel.setup_header,
        cmdline_len,
        initrd: setup.initrd,
        mem_bytes: setup.mem_bytes,
    })?;
    params::write_zero_page(setup.mem, &zero_page)?;
    mptable::write_mptable(setup.mem, setup.num_cpus)?;
    Ok(regs::write_boot_tables(setup.mem)?)
}

/// Per-VM inputs to every vCPU's boot state.
pub struct VcpuSetup<'a> {
    /// The host-adjusted supported CPUID table, normalised per vCPU here.
    pub cpuid: &'a CpuId,
    /// Boot MSRs the host supports.
    pub msrs: &'a [kvm_msr_entry],
    /// Whether the LAPIC offers the TSC-deadline timer.
    pub tsc_deadline: bool,
    /// CR3 from [`configure_system`].
    pub cr3: u64,
    /// The kernel's 64-bit entry point.
    pub entry: u64,
    /// Number of vCPUs.
    pub num_cpus: u8,
}

/// The CPUID table vCPU `index` of `count` gets: the host-adjusted supported table `base`,
/// normalised for this vCPU (topology, APIC id, hypervisor leaves, TSC deadline).
pub fn vcpu_cpuid(base: &CpuId, index: u8, count: u8, tsc_deadline: bool) -> CpuId {
    let mut cpuid = base.clone();
    let topology = cpuid::CpuTopology { index, count };
    cpuid::normalize(cpuid.as_mut_slice(), topology, tsc_deadline);
    cpuid
}

/// Sets vCPU `index`'s CPUID, MSRs, registers, FPU and LAPIC for the boot.
pub fn configure_vcpu(vcpu: &VcpuFd, index: u8, setup: &VcpuSetup<'_>) -> Result<(), BootError> {
    let cpuid = vcpu_cpuid(setup.cpuid, index, setup.num_cpus, setup.tsc_deadline);
    vcpu.set_cpuid2(&cpuid).map_err(BootError::SetCpuid)?;
    msr::set_msrs(vcpu, setup.msrs)?;
    regs::setup_long_mode(vcpu, setup.cr3, setup.entry)?;
    regs::setup_fpu(vcpu)?;
    regs::setup_lapic(vcpu)?;
    Ok(())
}
