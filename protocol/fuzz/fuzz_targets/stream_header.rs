//! The agent decodes this header from whatever connects to its stream port: any bytes must give
//! a header, "need more" or an error, never a panic, and a header must re-encode to its bytes.
#![no_main]

use bulkhead_protocol::stream::StreamHeader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((header, used))) = StreamHeader::decode(data) {
        assert!(used <= data.len());
        let again = header.encode().expect("a decoded header re-encodes");
        assert_eq!(&again[..], &data[..used]);
    }
});
