//! `linux.resources.devices` on cgroup v2: an eBPF program of type `CGROUP_DEVICE` attached to
//! the container's group, which the kernel asks before every device open and `mknod`.
//!
//! Rules are read like cgroup v1 read them, as runc does: start from "allow everything", later
//! rules override earlier ones. The program therefore checks the rules from the last to the
//! first and the first match decides; an allow rule matches when it grants every requested
//! access, a deny rule when it refuses any of them.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::cgroups::CgroupError;
use super::sys;

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const LDX_W: u8 = 0x61; // BPF_LDX | BPF_W | BPF_MEM
const AND32_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const RSH32_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const MOV32_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const JEQ_K: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

/// `BPF_DEVCG_DEV_*` and `BPF_DEVCG_ACC_*`.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;
const ACC_ALL: i32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0xf),
        off,
        imm,
    }
}

/// One rule, reduced to what the program compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    allow: bool,
    /// `None`: any type.
    kind: Option<i32>,
    major: Option<i32>,
    minor: Option<i32>,
    access: i32,
}

fn rule(d: &LinuxDeviceCgroup) -> Result<Option<Rule>, CgroupError> {
    let kind = match d.typ().unwrap_or(LinuxDeviceType::A) {
        LinuxDeviceType::A => None,
        LinuxDeviceType::B => Some(DEV_BLOCK),
        LinuxDeviceType::C | LinuxDeviceType::U => Some(DEV_CHAR),
        // FIFOs are not devices to the device controller (runc skips them too).
        LinuxDeviceType::P => return Ok(None),
    };
    let number = |n: Option<i64>| -> Result<Option<i32>, CgroupError> {
        match n {
            None | Some(-1) => Ok(None),
            Some(v) => i32::try_from(v)
                .ok()
                .filter(|v| *v >= 0)
                .map(Some)
                .ok_or(CgroupError::Invalid("device number out of range")),
        }
    };
    let mut access = 0;
    for c in d.access().as_deref().unwrap_or("rwm").chars() {
        access |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => {
                return Err(CgroupError::Invalid(
                    "device access must be made of r, w and m",
                ))
            }
        };
    }
    if access == 0 {
        access = ACC_ALL;
    }
    Ok(Some(Rule {
        allow: d.allow(),
        kind,
        major: number(d.major())?,
        minor: number(d.minor())?,
        access,
    }))
}

/// The checks of one rule; each `JNE`/`JEQ` skips to the end of the block on mismatch.
///
/// Every block loads the fields it compares from the context itself (r1) instead of keeping
/// them in registers across blocks. The verifier then sees no register live at a block's
/// start and prunes every later path into it, and no comparison whose outcome an earlier
/// block already decided (which would make it backtrack the whole path to mark the register
/// precise): checking the program stays linear in its length. In the guest the verifier runs
/// emulated, and with registers kept across Docker's rules it cost ~1 M guest-kernel
/// instructions (about half a second) per container.
fn block(r: &Rule) -> Vec<Insn> {
    let mut body: Vec<Insn> = Vec::new();
    if let Some(kind) = r.kind {
        body.push(insn(LDX_W, 2, 1, 0, 0));
        body.push(insn(AND32_K, 2, 0, 0, 0xffff));
        body.push(insn(JNE_K, 2, 0, 0, kind));
    }
    if r.access != ACC_ALL {
        body.push(insn(LDX_W, 3, 1, 0, 0));
        body.push(insn(RSH32_K, 3, 0, 0, 16));
    }
    if r.allow && r.access != ACC_ALL {
        // Matches when nothing outside the rule's access is asked for.
        body.push(insn(MOV32_X, 0, 3, 0, 0));
        body.push(insn(AND32_K, 0, 0, 0, !r.access & ACC_ALL));
        body.push(insn(JNE_K, 0, 0, 0, 0));
    } else if !r.allow && r.access != ACC_ALL {
        // Matches when anything the rule refuses is asked for.
        body.push(insn(MOV32_X, 0, 3, 0, 0));
        body.push(insn(AND32_K, 0, 0, 0, r.access));
        body.push(insn(JEQ_K, 0, 0, 0, 0));
    }
    if let Some(major) = r.major {
        body.push(insn(LDX_W, 4, 1, 4, 0));
        body.push(insn(JNE_K, 4, 0, 0, major));
    }
    if let Some(minor) = r.minor {
        body.push(insn(LDX_W, 5, 1, 8, 0));
        body.push(insn(JNE_K, 5, 0, 0, minor));
    }
    body.push(insn(MOV64_K, 0, 0, 0, i32::from(r.allow)));
    body.push(insn(EXIT, 0, 0, 0, 0));
    let len = body.len();
    for (i, ins) in body.iter_mut().enumerate() {
        if ins.code == JNE_K || ins.code == JEQ_K {
            // To the first instruction after this block.
            ins.off = (len - i - 1) as i16;
        }
    }
    body
}

/// What runc allows after the spec's rules, whatever they say (its `AllowedDevices`): `mknod`
/// of any node, and the devices every container gets (null, random, full, tty, zero, urandom,
/// the pty devices, tun). Engines rely on it: Docker's rules deny everything and list only some
/// of these, yet runc's containers always have, e.g., `/dev/full`.
const RUNC_ALLOWED: [Rule; 11] = {
    const fn allow(kind: i32, major: Option<i32>, minor: Option<i32>, access: i32) -> Rule {
        Rule {
            allow: true,
            kind: Some(kind),
            major,
            minor,
            access,
        }
    }
    const fn node(major: i32, minor: Option<i32>) -> Rule {
        allow(DEV_CHAR, Some(major), minor, ACC_ALL)
    }
    [
        allow(DEV_CHAR, None, None, ACC_MKNOD),
        allow(DEV_BLOCK, None, None, ACC_MKNOD),
        node(1, Some(3)),
        node(1, Some(8)),
        node(1, Some(7)),
        node(5, Some(0)),
        node(1, Some(5)),
        node(1, Some(9)),
        node(136, None),
        node(5, Some(2)),
        node(10, Some(200)),
    ]
};

/// The device rules the engines send by default: containerd (`ctr`), podman and `runc spec`
/// deny everything (so only [`RUNC_ALLOWED`] remains); Docker then allows a few character
/// devices and denies `/dev/fuse` again. Their programs are loaded when the guest starts (see
/// [`preload`]), so a guest restored from a template finds them verified.
const ENGINE_DEFAULTS: [&[Rule]; 2] = {
    const fn char_dev(allow: bool, major: i32, minor: i32) -> Rule {
        Rule {
            allow,
            kind: Some(DEV_CHAR),
            major: Some(major),
            minor: Some(minor),
            access: ACC_ALL,
        }
    }
    const DENY_ALL: Rule = Rule {
        allow: false,
        kind: None,
        major: None,
        minor: None,
        access: ACC_ALL,
    };
    [
        &[DENY_ALL],
        &[
            DENY_ALL,
            char_dev(true, 1, 5),
            char_dev(true, 1, 3),
            char_dev(true, 1, 9),
            char_dev(true, 1, 8),
            char_dev(true, 5, 0),
            char_dev(true, 5, 1),
            char_dev(false, 10, 229),
        ],
    ]
};

/// The program for `rules` followed by [`RUNC_ALLOWED`]; `None` when there are no rules
/// (nothing to restrict).
pub fn program(rules: &[LinuxDeviceCgroup]) -> Result<Option<Vec<Insn>>, CgroupError> {
    let parsed: Vec<Rule> = rules
        .iter()
        .map(rule)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    Ok(compile(parsed))
}

fn compile(mut parsed: Vec<Rule>) -> Option<Vec<Insn>> {
    if parsed.is_empty() {
        return None;
    }
    parsed.extend(RUNC_ALLOWED);
    // struct bpf_cgroup_dev_ctx (r1): access_type (type | access << 16), major, minor; each
    // block loads r2 = type, r3 = access, r4 = major, r5 = minor as it needs them.
    let mut out = Vec::new();
    for r in parsed.iter().rev() {
        out.extend(block(r));
        if r.kind.is_none() && r.major.is_none() && r.minor.is_none() && r.access == ACC_ALL {
            // Matches everything: what comes after would be dead code, which the verifier
            // refuses.
            return Some(out);
        }
    }
    // No rule matched: cgroup v1's default, allow.
    out.push(insn(MOV64_K, 0, 0, 0, 1));
    out.push(insn(EXIT, 0, 0, 0, 0));
    Some(out)
}

/// The preloaded programs (see [`preload`]), by their instructions. Loading is the costly part
/// (the verifier, the program's SHA-1 tag: ~0.6 M emulated guest-kernel instructions for
/// Docker's rules on PVM hosts), and a loaded program can be attached to any number of groups.
/// Only the engines' defaults are kept: other rule sets come from users (`--device`, device
/// plugins) and may be many, so their programs are loaded per container and closed once
/// attached (the attachment keeps a program alive).
static PRELOADED: Mutex<Vec<(Vec<Insn>, OwnedFd)>> = Mutex::new(Vec::new());

fn preloaded() -> std::sync::MutexGuard<'static, Vec<(Vec<Insn>, OwnedFd)>> {
    PRELOADED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Loads `prog` into the kernel; returns its descriptor (close-on-exec).
fn load(prog: &[Insn]) -> Result<OwnedFd, CgroupError> {
    // SAFETY: `Insn` is the kernel's `struct bpf_insn` layout (8 bytes, no padding).
    let bytes = unsafe {
        std::slice::from_raw_parts(prog.as_ptr().cast::<u8>(), std::mem::size_of_val(prog))
    };
    let fd = sys::bpf_load_cgroup_device(bytes, prog.len())
        .map_err(|e| CgroupError::Bpf("load device program", e))?;
    // SAFETY: BPF_PROG_LOAD returned a new descriptor (close-on-exec) that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Loads the programs of the engines' default rules ([`ENGINE_DEFAULTS`]) ahead of any
/// container.
pub fn preload() -> Result<(), CgroupError> {
    for rules in ENGINE_DEFAULTS {
        if let Some(prog) = compile(rules.to_vec()) {
            let mut kept = preloaded();
            if !kept.iter().any(|(p, _)| *p == prog) {
                let fd = load(&prog)?;
                kept.push((prog, fd));
            }
        }
    }
    Ok(())
}

/// Attaches `prog` (a preloaded one, or loaded now) to the cgroup directory `cgroup`,
/// replacing the group's previous device program.
pub fn attach(cgroup: RawFd, prog: &[Insn]) -> Result<(), CgroupError> {
    let attach = |fd: RawFd| {
        sys::bpf_attach_cgroup_device(cgroup, fd)
            .map_err(|e| CgroupError::Bpf("attach device program", e))
    };
    if let Some((_, fd)) = preloaded().iter().find(|(p, _)| p == prog) {
        return attach(fd.as_raw_fd());
    }
    attach(load(prog)?.as_raw_fd())
}

/// Runs `prog` on a device access, for tests.
#[cfg(test)]
pub fn run(prog: &[Insn], kind: i32, access: i32, major: u32, minor: u32) -> u64 {
    let ctx = [(access as u32) << 16 | kind as u32, major, minor];
    let mut r = [0u64; 11];
    let mut pc = 0usize;
    loop {
        let i = prog[pc];
        let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
        pc += 1;
        match i.code {
            LDX_W => r[dst] = u64::from(ctx[i.off as usize / 4]),
            AND32_K => r[dst] = u64::from(r[dst] as u32 & i.imm as u32),
            RSH32_K => r[dst] = u64::from((r[dst] as u32) >> i.imm),
            MOV32_X => r[dst] = u64::from(r[src] as u32),
            MOV64_K => r[dst] = i.imm as i64 as u64,
            JEQ_K if r[dst] == i.imm as i64 as u64 => pc += i.off as usize,
            JNE_K if r[dst] != i.imm as i64 as u64 => pc += i.off as usize,
            JEQ_K | JNE_K => {}
            EXIT => return r[0],
            other => panic!("unexpected opcode {other:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the engines installed here sent (captured from their config.json): the preloaded
    /// programs are exactly the ones their containers ask for.
    #[test]
    fn engine_defaults_are_what_the_engines_send() {
        let docker: Vec<LinuxDeviceCgroup> = serde_json::from_str(
            r#"[{"allow":false,"access":"rwm"},
                {"allow":true,"type":"c","major":1,"minor":5,"access":"rwm"},
                {"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"},
                {"allow":true,"type":"c","major":1,"minor":9,"access":"rwm"},
                {"allow":true,"type":"c","major":1,"minor":8,"access":"rwm"},
                {"allow":true,"type":"c","major":5,"minor":0,"access":"rwm"},
                {"allow":true,"type":"c","major":5,"minor":1,"access":"rwm"},
                {"allow":false,"type":"c","major":10,"minor":229,"access":"rwm"}]"#,
        )
        .unwrap();
        let deny_all: Vec<LinuxDeviceCgroup> =
            serde_json::from_str(r#"[{"allow":false,"access":"rwm"}]"#).unwrap();
        for (sent, default) in [
            (&deny_all, ENGINE_DEFAULTS[0]),
            (&docker, ENGINE_DEFAULTS[1]),
        ] {
            assert_eq!(program(sent).unwrap(), compile(default.to_vec()));
        }
    }

    #[test]
    fn dockers_rules_allow_only_the_listed_devices() {
        let rules: Vec<LinuxDeviceCgroup> = serde_json::from_str(
            r#"[{"allow":false,"access":"rwm"},
                {"allow":true,"type":"c","major":4,"minor":1,"access":"rwm"},
                {"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"},
                {"allow":true,"type":"c","major":136,"access":"rwm"},
                {"allow":true,"type":"c","major":5,"minor":1,"access":"r"},
                {"allow":false,"type":"c","major":4,"minor":1,"access":"w"},
                {"allow":true,"type":"p","major":1,"minor":1}]"#,
        )
        .unwrap();
        let p = program(&rules).unwrap().unwrap();
        let rw = ACC_READ | ACC_WRITE;
        assert_eq!(run(&p, DEV_CHAR, rw, 1, 3), 1);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 136, 7), 1);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 5, 1), 1);
        // Partial access: read-only rule, read-write asked.
        assert_eq!(run(&p, DEV_CHAR, rw, 5, 1), 0);
        // A later deny of one access wins over an earlier allow.
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 4, 1), 1);
        assert_eq!(run(&p, DEV_CHAR, rw, 4, 1), 0);
        // runc's defaults: mknod of anything, the standard devices (full is not in the list),
        // but no opening of unlisted devices.
        assert_eq!(run(&p, DEV_BLOCK, ACC_MKNOD, 8, 0), 1);
        assert_eq!(run(&p, DEV_CHAR, ACC_MKNOD, 1, 7), 1);
        assert_eq!(run(&p, DEV_CHAR, rw, 1, 7), 1);
        assert_eq!(run(&p, DEV_CHAR, rw, 136, 3), 1);
        assert_eq!(run(&p, DEV_BLOCK, ACC_READ, 8, 0), 0);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 1), 0);
        assert!(program(&[]).unwrap().is_none());
        // Nothing follows a rule that matches everything (the verifier refuses dead code).
        assert_eq!(p.last(), Some(&insn(EXIT, 0, 0, 0, 0)));
        assert_eq!(p[p.len() - 2], insn(MOV64_K, 0, 0, 0, 0));
        let allow_tail: Vec<LinuxDeviceCgroup> =
            serde_json::from_str(r#"[{"allow":false,"type":"b","access":"r"}]"#).unwrap();
        let q = program(&allow_tail).unwrap().unwrap();
        assert_eq!(run(&q, DEV_BLOCK, ACC_READ, 8, 0), 0);
        assert_eq!(run(&q, DEV_CHAR, ACC_READ, 1, 3), 1);
        let bad: Vec<LinuxDeviceCgroup> =
            serde_json::from_str(r#"[{"allow":true,"access":"rx"}]"#).unwrap();
        assert!(program(&bad).is_err());
    }
}
