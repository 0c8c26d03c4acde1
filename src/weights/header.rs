//! Naming the tensor behind a safetensors header the `safetensors` crate refused.
//!
//! The crate decides whether a header is valid ([`super::SafetensorsFile`] hands it the header
//! bytes); some of its errors do not say which tensor is at fault ("invalid shape, data type,
//! or offset for tensor"). This re-reads the refused header as plain JSON only to find that
//! tensor for the message; it never accepts anything the crate refused.

use serde_json::Value;

/// The crate's limit on the header's length (`safetensors::tensor::MAX_HEADER_SIZE`, private).
pub(super) const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The detail for a header the crate refused with `crate_msg`: the first tensor (in data order)
/// that breaks a rule, and the rule; else the crate's message.
pub(super) fn header_problem(header: &[u8], crate_msg: &str) -> String {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(header) else {
        return format!("header JSON: {crate_msg}");
    };
    let mut tensors: Vec<(&String, &Value)> = obj.iter().filter(|(k, _)| k.as_str() != "__metadata__").collect();
    let offsets = |v: &Value| -> Option<(u64, u64)> {
        let a = v.get("data_offsets")?.as_array()?;
        match a[..] {
            [ref b, ref e] => Some((b.as_u64()?, e.as_u64()?)),
            _ => None,
        }
    };
    tensors.sort_by_key(|(_, v)| offsets(v).unwrap_or((0, 0)));
    let mut next = 0u64;
    for (name, v) in tensors {
        let bad = |d: String| format!("tensor '{name}': {d}");
        let Some(dtype_name) = v.get("dtype").and_then(Value::as_str) else { return bad("no dtype".into()) };
        let Ok(dtype) = serde_json::from_value::<safetensors::Dtype>(Value::String(dtype_name.into())) else {
            return bad(format!("unknown dtype '{dtype_name}'"));
        };
        let Some(shape) = v.get("shape").and_then(Value::as_array).and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
        else {
            return bad("shape is not a list of sizes".into());
        };
        let Some((b, e)) = offsets(v) else { return bad("data_offsets is not [begin, end]".into()) };
        if e < b {
            return bad(format!("data_offsets [{b}, {e}] end before they begin"));
        }
        if b != next {
            return bad(format!(
                "data_offsets [{b}, {e}] {} (the data must be tensors back to back from offset 0)",
                if b < next { format!("overlap the previous tensor, which ends at {next}") } else { format!("leave a gap after offset {next}") }
            ));
        }
        next = e;
        let Some(bytes) = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.bitsize() as u64))
            .filter(|&bits| usize::try_from(bits).is_ok())
            .map(|bits| bits.div_ceil(8))
        else {
            return bad(format!("shape {shape:?} of {dtype_name} overflows"));
        };
        if bytes != e - b {
            return bad(format!("{} bytes for shape {shape:?} of {dtype_name} ({bytes} expected)", e - b));
        }
    }
    format!("header: {crate_msg}")
}
