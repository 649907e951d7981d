//! [`Pod`]: a KVM struct (plain C data: integers, arrays, unions of integers) serialized as its
//! exact bytes.
//!
//! kvm-bindings' own serde support zero-pads a short input, which would let a truncated or
//! hand-made snapshot restore garbage registers; here a length other than the struct's size is
//! an error. Any bit pattern of the right length is a valid value (zerocopy's `FromBytes`), so
//! nothing else needs checking at this level.

use serde::de::Visitor;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// A KVM struct that (de)serializes as exactly `size_of::<T>()` bytes.
#[derive(Debug)]
pub struct Pod<T>(pub T);

/// By bytes: some KVM structs (`kvm_xsave`) are not `Clone`.
impl<T: IntoBytes + FromBytes + Immutable> Clone for Pod<T> {
    fn clone(&self) -> Self {
        let mut copy = T::new_zeroed();
        copy.as_mut_bytes().copy_from_slice(self.0.as_bytes());
        Pod(copy)
    }
}

impl<T: IntoBytes + Immutable> PartialEq for Pod<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes() == other.0.as_bytes()
    }
}

impl<T: IntoBytes + Immutable> Serialize for Pod<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0.as_bytes())
    }
}

struct BytesOf<T>(std::marker::PhantomData<T>);

impl<T: FromBytes> Visitor<'_> for BytesOf<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes", std::mem::size_of::<T>())
    }

    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<T, E> {
        T::read_from_bytes(bytes).map_err(|_| E::invalid_length(bytes.len(), &self))
    }
}

impl<'de, T: FromBytes> Deserialize<'de> for Pod<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_bytes(BytesOf::<T>(std::marker::PhantomData))
            .map(Pod)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_regs;

    #[test]
    fn exact_bytes_round_trip_and_wrong_lengths_fail() {
        let regs = Pod(kvm_regs {
            rip: 0x1234,
            rax: 7,
            ..Default::default()
        });
        let bytes = postcard::to_stdvec(&regs).unwrap();
        let back: Pod<kvm_regs> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, regs);
        assert_eq!(back.0.rip, 0x1234);

        let short = postcard::to_stdvec(&serde_bytes_of(&[0u8; 8])).unwrap();
        assert!(postcard::from_bytes::<Pod<kvm_regs>>(&short).is_err());
        assert!(postcard::from_bytes::<Pod<kvm_regs>>(&bytes[..bytes.len() - 1]).is_err());
    }

    /// A byte string as serde sees one.
    fn serde_bytes_of(b: &[u8]) -> impl Serialize + '_ {
        struct B<'a>(&'a [u8]);
        impl Serialize for B<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        B(b)
    }
}
