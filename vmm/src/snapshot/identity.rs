//! What a snapshot may only be restored with: the same guest image (kernel + initrd), host
//! profile, CPU model and CPUID table, and TSC frequency.
//!
//! A restored guest keeps running the kernel it booted, with the CPU features it probed at
//! boot; a different host CPU, a different CPUID table or a TSC that ticks at another rate
//! would make it misbehave in ways that are hard to trace back, so restore refuses instead.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use kvm_bindings::CpuId;
use kvm_ioctls::{Cap, Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

use crate::compat::HostProfile;
use sha2::{Digest, Sha256};

/// The guest image a VM booted: SHA-256 over the kernel and the initrd (length-framed, so
/// moving bytes from one file to the other changes it). Compute it with [`ImageId::of_files`]
/// (≈ 20-40 ms for a 10-40 MB kernel: cache it per file if that matters) or use any 32-byte id
/// that changes whenever the kernel or initrd does.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageId(pub [u8; 32]);

impl ImageId {
    /// Hashes the kernel and, if any, the initrd.
    pub fn of_files(kernel: &Path, initrd: Option<&Path>) -> io::Result<Self> {
        let mut hash = Sha256::new();
        hash.update(b"bulkhead-vmm image v1\0");
        hash_file(&mut hash, kernel)?;
        match initrd {
            Some(path) => hash_file(&mut hash, path)?,
            None => hash.update(u64::MAX.to_le_bytes()),
        }
        Ok(Self(hash.finalize().into()))
    }
}

fn hash_file(hash: &mut Sha256, path: &Path) -> io::Result<()> {
    let mut file = File::open(path)?;
    hash.update(file.metadata()?.len().to_le_bytes());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        hash.update(&buf[..n]);
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // 12 hex digits name an image well enough in an error line.
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageId({self})")
    }
}

/// The host CPU as CPUID leaves 0 and 1 describe it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuModel {
    /// `GenuineIntel`, `AuthenticAMD`, …
    pub vendor: String,
    /// Display family.
    pub family: u32,
    /// Display model.
    pub model: u32,
    /// Stepping.
    pub stepping: u32,
}

impl CpuModel {
    /// The model in KVM's supported CPUID table (leaves 0 and 1 are the host's).
    pub fn from_cpuid(cpuid: &CpuId) -> Self {
        let leaf = |f: u32| cpuid.as_slice().iter().find(|e| e.function == f);
        let vendor = leaf(0)
            .map(|e| {
                let bytes: Vec<u8> = [e.ebx, e.edx, e.ecx]
                    .iter()
                    .flat_map(|r| r.to_le_bytes())
                    .collect();
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .unwrap_or_default();
        let eax = leaf(1).map_or(0, |e| e.eax);
        let base_family = (eax >> 8) & 0xf;
        let base_model = (eax >> 4) & 0xf;
        let family = if base_family == 0xf {
            base_family + ((eax >> 20) & 0xff)
        } else {
            base_family
        };
        let model = if base_family == 0x6 || base_family == 0xf {
            base_model | (((eax >> 16) & 0xf) << 4)
        } else {
            base_model
        };
        Self {
            vendor,
            family,
            model,
            stepping: eax & 0xf,
        }
    }
}

impl fmt::Display for CpuModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} family {:#x} model {:#x} stepping {}",
            self.vendor, self.family, self.model, self.stepping
        )
    }
}

/// Everything about the host a snapshot is tied to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostIdentity {
    /// The host profile's name (`hardware`, `pvm`).
    pub profile: String,
    /// The host CPU.
    pub cpu: CpuModel,
    /// The vCPUs' TSC frequency, if KVM reports one.
    pub tsc_khz: Option<u32>,
}

impl HostIdentity {
    /// This host: `supported` is KVM's supported CPUID table, `vcpu` any vCPU of the VM.
    pub fn probe(kvm: &Kvm, profile: HostProfile, supported: &CpuId, vcpu: &VcpuFd) -> Self {
        let tsc_khz = if kvm.check_extension(Cap::GetTscKhz) {
            vcpu.get_tsc_khz().ok()
        } else {
            None
        };
        Self {
            profile: profile.name().to_owned(),
            cpu: CpuModel::from_cpuid(supported),
            tsc_khz,
        }
    }
}

/// How a snapshot does not fit this host or the caller's expectations; one line each.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Mismatch {
    /// Another VMM build.
    #[error("written by bulkhead-vmm {found}, this is {expected}")]
    VmmVersion {
        /// In the snapshot.
        found: String,
        /// Ours.
        expected: String,
    },
    /// Another host profile.
    #[error("taken on a {found} host, this host is {expected}")]
    Profile {
        /// In the snapshot.
        found: String,
        /// Ours.
        expected: String,
    },
    /// Another CPU.
    #[error("taken on {found}, this host has {expected}")]
    Cpu {
        /// In the snapshot.
        found: CpuModel,
        /// Ours.
        expected: CpuModel,
    },
    /// Another TSC frequency (and no TSC scaling to hide it).
    #[error("taken with a {found:?} kHz TSC, this host's runs at {expected:?} kHz")]
    Tsc {
        /// In the snapshot.
        found: Option<u32>,
        /// Ours.
        expected: Option<u32>,
    },
    /// The guest was given other CPU features than this host would give it.
    #[error(
        "vcpu {vcpu} was given other cpuid leaves than this host offers (first: leaf {leaf:#x})"
    )]
    Cpuid {
        /// The vCPU.
        vcpu: usize,
        /// The first differing leaf.
        leaf: u32,
    },
    /// Another kernel or initrd.
    #[error("booted image {found}, expected image {expected}")]
    Image {
        /// In the snapshot.
        found: ImageId,
        /// What the caller expects.
        expected: ImageId,
    },
}

/// Checks a snapshot's host against this one's.
pub fn check_host(found: &HostIdentity, expected: &HostIdentity) -> Result<(), Mismatch> {
    if found.profile != expected.profile {
        return Err(Mismatch::Profile {
            found: found.profile.clone(),
            expected: expected.profile.clone(),
        });
    }
    if found.cpu != expected.cpu {
        return Err(Mismatch::Cpu {
            found: found.cpu.clone(),
            expected: expected.cpu.clone(),
        });
    }
    if found.tsc_khz != expected.tsc_khz {
        return Err(Mismatch::Tsc {
            found: found.tsc_khz,
            expected: expected.tsc_khz,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn cpu_model_from_leaves() {
        let cpuid = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 0,
                ebx: u32::from_le_bytes(*b"Genu"),
                edx: u32::from_le_bytes(*b"ineI"),
                ecx: u32::from_le_bytes(*b"ntel"),
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 1,
                eax: 0x0005_0657, // family 6, model 0x55, stepping 7
                ..Default::default()
            },
        ])
        .unwrap();
        let m = CpuModel::from_cpuid(&cpuid);
        assert_eq!(
            m.to_string(),
            "GenuineIntel family 0x6 model 0x55 stepping 7"
        );
    }

    #[test]
    fn image_id_depends_on_both_files_and_their_split() {
        let dir = tempfile::tempdir().unwrap();
        let w = |n: &str, b: &[u8]| {
            let p = dir.path().join(n);
            std::fs::write(&p, b).unwrap();
            p
        };
        let (k, i) = (w("k", b"kernel"), w("i", b"initrd"));
        let (k2, i2) = (w("k2", b"kerneli"), w("i2", b"nitrd"));
        let a = ImageId::of_files(&k, Some(&i)).unwrap();
        assert_eq!(a, ImageId::of_files(&k, Some(&i)).unwrap());
        assert_ne!(a, ImageId::of_files(&k2, Some(&i2)).unwrap());
        assert_ne!(a, ImageId::of_files(&k, None).unwrap());
        assert!(ImageId::of_files(&dir.path().join("none"), None).is_err());
        assert_eq!(a.to_string().len(), 12);
    }

    #[test]
    fn host_checks_name_the_difference() {
        let cpu = CpuModel {
            vendor: "GenuineIntel".into(),
            family: 6,
            model: 0x55,
            stepping: 7,
        };
        let host = HostIdentity {
            profile: "pvm".into(),
            cpu: cpu.clone(),
            tsc_khz: Some(2_000_000),
        };
        assert!(check_host(&host, &host).is_ok());
        let mut other = host.clone();
        other.profile = "hardware".into();
        assert_eq!(
            check_host(&host, &other).unwrap_err().to_string(),
            "taken on a pvm host, this host is hardware"
        );
        let mut other = host.clone();
        other.cpu.stepping = 4;
        assert!(matches!(
            check_host(&host, &other),
            Err(Mismatch::Cpu { .. })
        ));
        let mut other = host.clone();
        other.tsc_khz = Some(1);
        assert!(matches!(
            check_host(&host, &other),
            Err(Mismatch::Tsc { .. })
        ));
    }
}
