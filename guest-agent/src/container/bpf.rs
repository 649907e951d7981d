//! Code generation for seccomp filters: classic BPF over `struct seccomp_data`.
//!
//! The filter is a binary search over ranges of syscall numbers that share their code, not a
//! linear chain: every system call the container makes runs it, and in the guest every BPF
//! instruction is emulated kernel code, so ~7 comparisons instead of ~350 matter. Loading it
//! costs in proportion to its length too (the kernel checks it, converts it to eBPF twice and
//! runs it once per syscall number to build its action cache, all emulated on PVM hosts), and
//! ranges make Docker's profile ~4× shorter than one leaf per syscall. Each range's block
//! (argument checks, then its action) ends in a `RET`, so blocks need no jumps to shared code;
//! conditional jumps whose 8-bit offset would overflow go through a `JA` trampoline.

use libc::sock_filter;

/// `seccomp_data` offsets.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const BPF_JGT_K: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
const BPF_JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const BPF_JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const BPF_JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const BPF_AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// `AUDIT_ARCH_X86_64`.
pub const ARCH_X86_64: u32 = 0xc000_003e;
/// The bit x32 system calls carry in their number.
pub const X32_BIT: u32 = 0x4000_0000;
/// Longest filter the kernel accepts.
pub const MAX_INSNS: usize = 4096;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Comparison of one 64-bit argument with a constant (unsigned, like libseccomp).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq(u64),
    Ne(u64),
    Lt(u64),
    Le(u64),
    Gt(u64),
    Ge(u64),
    /// `(arg & mask) == value`.
    MaskedEq {
        mask: u64,
        value: u64,
    },
}

/// One argument condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cond {
    pub arg: u8,
    pub cmp: Cmp,
}

/// Conditions that must all hold for `ret` to be returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub conds: Vec<Cond>,
    pub ret: u32,
}

/// Everything about one syscall: conditional rules tried in order, then `fallback`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub nr: u32,
    pub rules: Vec<Rule>,
    pub fallback: u32,
}

/// A jump target inside a rule: relative to the next instruction, or "this rule failed".
#[derive(Clone, Copy)]
enum To {
    Skip(u8),
    Fail,
}

fn cond_code(c: &Cond, out: &mut Vec<(sock_filter, To, To)>) {
    let lo = OFF_ARGS + 8 * u32::from(c.arg);
    let hi = lo + 4;
    let split = |v: u64| ((v >> 32) as u32, v as u32);
    let ld = |off| (stmt(BPF_LD_W_ABS, off), To::Skip(0), To::Skip(0));
    let j = |code, k, t, f| (jump(code, k, 0, 0), t, f);
    match c.cmp {
        Cmp::Eq(v) => {
            let (vh, vl) = split(v);
            out.extend([
                ld(hi),
                j(BPF_JEQ_K, vh, To::Skip(0), To::Fail),
                ld(lo),
                j(BPF_JEQ_K, vl, To::Skip(0), To::Fail),
            ]);
        }
        Cmp::Ne(v) => {
            let (vh, vl) = split(v);
            out.extend([
                ld(hi),
                j(BPF_JEQ_K, vh, To::Skip(0), To::Skip(2)),
                ld(lo),
                j(BPF_JEQ_K, vl, To::Fail, To::Skip(0)),
            ]);
        }
        Cmp::Gt(v) | Cmp::Ge(v) => {
            let (vh, vl) = split(v);
            let last = if matches!(c.cmp, Cmp::Gt(_)) {
                BPF_JGT_K
            } else {
                BPF_JGE_K
            };
            out.extend([
                ld(hi),
                j(BPF_JGT_K, vh, To::Skip(3), To::Skip(0)),
                j(BPF_JEQ_K, vh, To::Skip(0), To::Fail),
                ld(lo),
                j(last, vl, To::Skip(0), To::Fail),
            ]);
        }
        Cmp::Lt(v) | Cmp::Le(v) => {
            let (vh, vl) = split(v);
            // a < v  ⇔  !(a >= v);  a <= v  ⇔  !(a > v).
            let last = if matches!(c.cmp, Cmp::Lt(_)) {
                BPF_JGE_K
            } else {
                BPF_JGT_K
            };
            out.extend([
                ld(hi),
                j(BPF_JGT_K, vh, To::Fail, To::Skip(0)),
                j(BPF_JEQ_K, vh, To::Skip(0), To::Skip(2)),
                ld(lo),
                j(last, vl, To::Fail, To::Skip(0)),
            ]);
        }
        Cmp::MaskedEq { mask, value } => {
            let (mh, ml) = split(mask);
            let (vh, vl) = split(value);
            out.extend([
                ld(hi),
                (stmt(BPF_AND_K, mh), To::Skip(0), To::Skip(0)),
                j(BPF_JEQ_K, vh, To::Skip(0), To::Fail),
                ld(lo),
                (stmt(BPF_AND_K, ml), To::Skip(0), To::Skip(0)),
                j(BPF_JEQ_K, vl, To::Skip(0), To::Fail),
            ]);
        }
    }
}

/// The code of one syscall's block; `None` if a rule is too long for 8-bit jumps.
fn block(entry: &Entry) -> Option<Vec<sock_filter>> {
    let mut out = Vec::new();
    for rule in &entry.rules {
        let mut code = Vec::new();
        for c in &rule.conds {
            cond_code(c, &mut code);
        }
        code.push((stmt(BPF_RET_K, rule.ret), To::Skip(0), To::Skip(0)));
        let len = code.len();
        for (i, (mut insn, t, f)) in code.into_iter().enumerate() {
            let resolve = |to| match to {
                To::Skip(n) => Some(n),
                To::Fail => u8::try_from(len - i - 1).ok(),
            };
            insn.jt = resolve(t)?;
            insn.jf = resolve(f)?;
            out.push(insn);
        }
    }
    out.push(stmt(BPF_RET_K, entry.fallback));
    Some(out)
}

/// The search tree over `ranges` (sorted, covering `first..` without gaps: each starts where
/// the previous one ends), every path ending in its range's block, which ends in a `RET`.
fn tree(ranges: &[(u32, Vec<sock_filter>)]) -> Vec<sock_filter> {
    let [(_, block)] = ranges else {
        let mid = ranges.len() / 2;
        let (left, right) = ranges.split_at(mid);
        let pivot = right[0].0;
        let left = tree(left);
        let right = tree(right);
        let mut out = Vec::with_capacity(left.len() + right.len() + 2);
        match u8::try_from(left.len()) {
            Ok(n) => out.push(jump(BPF_JGE_K, pivot, n, 0)),
            Err(_) => {
                out.push(jump(BPF_JGE_K, pivot, 0, 1));
                out.push(stmt(BPF_JA, left.len() as u32));
            }
        }
        out.extend(left);
        out.extend(right);
        return out;
    };
    block.clone()
}

/// Splits the syscall numbers from 0 up into ranges of equal blocks: a syscall without an
/// entry gets `RET default`, and neighbours whose code is the same share one range. Docker's
/// profile allows most syscalls in long runs, so ~70 ranges replace ~370 numbers.
fn ranges(blocks: Vec<(u32, Vec<sock_filter>)>, default: u32) -> Vec<(u32, Vec<sock_filter>)> {
    let plain = vec![stmt(BPF_RET_K, default)];
    let mut out: Vec<(u32, Vec<sock_filter>)> = Vec::new();
    let mut next = 0u32;
    let mut push = |start: u32, block: Vec<sock_filter>| match out.last() {
        Some((_, last)) if *last == block => {}
        _ => out.push((start, block)),
    };
    for (nr, block) in blocks {
        if nr > next {
            push(next, plain.clone());
        }
        push(nr, block);
        next = nr.saturating_add(1);
    }
    push(next, plain);
    out
}

/// Everything the filter decides.
pub struct Program<'a> {
    /// Per-syscall rules for x86_64 (numbers unique).
    pub entries: &'a [Entry],
    /// Action for syscalls without an entry.
    pub default: u32,
    /// Action for every other architecture (i386 and friends).
    pub bad_arch: u32,
    /// x32 calls run through the same rules (number without the x32 bit); else `bad_arch`.
    pub x32: bool,
    /// Syscalls numbered above this get `ENOSYS` (runc's answer for calls newer than the profile).
    pub enosys_above: Option<u32>,
}

/// Compiles the filter; `None` if it exceeds the kernel's size limit.
pub fn compile(p: &Program<'_>) -> Option<Vec<sock_filter>> {
    let mut sorted: Vec<&Entry> = p.entries.iter().collect();
    sorted.sort_by_key(|e| e.nr);
    let mut blocks = Vec::new();
    for e in sorted {
        blocks.push((e.nr, block(e)?));
    }
    let mut out = vec![
        stmt(BPF_LD_W_ABS, OFF_ARCH),
        jump(BPF_JEQ_K, ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, p.bad_arch),
        stmt(BPF_LD_W_ABS, OFF_NR),
    ];
    if p.x32 {
        out.push(jump(BPF_JSET_K, X32_BIT, 0, 1));
        out.push(stmt(BPF_AND_K, !X32_BIT));
    } else {
        out.push(jump(BPF_JSET_K, X32_BIT, 0, 1));
        out.push(stmt(BPF_RET_K, p.bad_arch));
    }
    if let Some(max) = p.enosys_above {
        out.push(jump(BPF_JGT_K, max, 0, 1));
        out.push(stmt(
            BPF_RET_K,
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        ));
    }
    out.extend(tree(&ranges(blocks, p.default)));
    (out.len() <= MAX_INSNS).then_some(out)
}

/// A classic-BPF interpreter for the instructions above, so tests can check what a filter
/// decides without loading it into the kernel.
#[cfg(test)]
pub fn run(filter: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_le_bytes());
    data[4..8].copy_from_slice(&arch.to_le_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    let mut a: u32 = 0;
    let mut pc = 0usize;
    loop {
        let insn = filter[pc];
        pc += 1;
        let cond = |t: bool| {
            if t {
                insn.jt as usize
            } else {
                insn.jf as usize
            }
        };
        match insn.code {
            BPF_LD_W_ABS => {
                let off = insn.k as usize;
                a = u32::from_le_bytes(data[off..off + 4].try_into().unwrap());
            }
            BPF_AND_K => a &= insn.k,
            BPF_JA => pc += insn.k as usize,
            BPF_JEQ_K => pc += cond(a == insn.k),
            BPF_JGT_K => pc += cond(a > insn.k),
            BPF_JGE_K => pc += cond(a >= insn.k),
            BPF_JSET_K => pc += cond(a & insn.k != 0),
            BPF_RET_K => return insn.k,
            other => panic!("unexpected opcode {other:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | 1;
    const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;

    fn one(cmp: Cmp) -> Vec<sock_filter> {
        let entries = [Entry {
            nr: 7,
            rules: vec![Rule {
                conds: vec![Cond { arg: 2, cmp }],
                ret: ALLOW,
            }],
            fallback: EPERM,
        }];
        compile(&Program {
            entries: &entries,
            default: KILL,
            bad_arch: KILL,
            x32: false,
            enosys_above: None,
        })
        .unwrap()
    }

    #[test]
    fn comparisons_are_64_bit_unsigned() {
        let big = 0x1_0000_0005u64;
        let values = [0, 4, 5, 6, big - 1, big, big + 1, u64::MAX];
        type Check = (Cmp, fn(u64) -> bool);
        let checks: [Check; 7] = [
            (Cmp::Eq(big), |a| a == 0x1_0000_0005),
            (Cmp::Ne(big), |a| a != 0x1_0000_0005),
            (Cmp::Lt(big), |a| a < 0x1_0000_0005),
            (Cmp::Le(big), |a| a <= 0x1_0000_0005),
            (Cmp::Gt(big), |a| a > 0x1_0000_0005),
            (Cmp::Ge(big), |a| a >= 0x1_0000_0005),
            (
                Cmp::MaskedEq {
                    mask: 0xff_0000_00ff,
                    value: 0x01_0000_0005,
                },
                |a| a & 0xff_0000_00ff == 0x01_0000_0005,
            ),
        ];
        for (cmp, want) in checks {
            let f = one(cmp);
            for v in values {
                let mut args = [0; 6];
                args[2] = v;
                let expect = if want(v) { ALLOW } else { EPERM };
                assert_eq!(run(&f, ARCH_X86_64, 7, args), expect, "{cmp:?} on {v:#x}");
            }
        }
    }

    #[test]
    fn neighbours_with_the_same_code_share_a_range() {
        let allow = |nr| Entry {
            nr,
            rules: Vec::new(),
            fallback: ALLOW,
        };
        // 0..=9 and 12..=19 allowed, 10 and 11 default, 20 and up default (no ENOSYS stub).
        let entries: Vec<Entry> = (0..10).chain(12..20).map(allow).collect();
        let p = Program {
            entries: &entries,
            default: EPERM,
            bad_arch: KILL,
            x32: false,
            enosys_above: None,
        };
        let f = compile(&p).unwrap();
        // The arch and x32 checks, then 3 comparisons over 4 ranges, each one RET.
        assert_eq!(f.len(), 6 + 3 + 4, "{f:?}");
        for nr in 0..40 {
            let want = if nr < 10 || (12..20).contains(&nr) {
                ALLOW
            } else {
                EPERM
            };
            assert_eq!(run(&f, ARCH_X86_64, nr, [0; 6]), want, "nr {nr}");
        }
    }

    #[test]
    fn search_tree_finds_every_entry() {
        // Many entries with long bodies force trampolines in the tree and in the guards.
        let entries: Vec<Entry> = (0..400)
            .map(|nr| Entry {
                nr: nr * 3,
                rules: (0..if nr % 50 == 0 { 60 } else { 0 })
                    .map(|v| Rule {
                        conds: vec![Cond {
                            arg: 0,
                            cmp: Cmp::Eq(v),
                        }],
                        ret: libc::SECCOMP_RET_ERRNO | (v as u32 + 100),
                    })
                    .collect(),
                fallback: libc::SECCOMP_RET_ERRNO | nr,
            })
            .collect();
        let f = compile(&Program {
            entries: &entries,
            default: KILL,
            bad_arch: KILL,
            x32: true,
            enosys_above: Some(1200),
        })
        .unwrap();
        for nr in 0..1300u32 {
            let want = if nr > 1200 {
                libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32
            } else if nr % 3 == 0 && nr / 3 < 400 {
                libc::SECCOMP_RET_ERRNO | (nr / 3)
            } else {
                KILL
            };
            assert_eq!(run(&f, ARCH_X86_64, nr, [1000; 6]), want, "nr {nr}");
            assert_eq!(run(&f, ARCH_X86_64, nr | X32_BIT, [1000; 6]), want);
        }
        assert_eq!(
            run(&f, ARCH_X86_64, 150, [59, 0, 0, 0, 0, 0]),
            libc::SECCOMP_RET_ERRNO | 159
        );
        assert_eq!(run(&f, 0x4000_0003, 0, [0; 6]), KILL);
    }
}
