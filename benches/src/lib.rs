//! Shared pieces of the omnirouter benchmarks: the request bodies every load generator sends,
//! so the HTTP runs (`gen-requests` → wrk), the raw producer (`ingest-ref produce`) and the
//! criterion micro-benchmarks all work on messages of the same size and shape.

use serde_json::json;

pub mod tenant_api;

/// A memory field of `/proc/PID/status` in KiB (`"VmRSS:"`: resident now, `"VmHWM:"`: its
/// peak): how the load generators watch the daemon's memory.
pub fn memory_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The default body size in bytes: a typical chat message with a short Vietnamese text.
pub const DEFAULT_BODY_SIZE: usize = 510;

/// Customer names for the `contact.name` field.
const NAMES: &[&str] = &[
    "Nguyễn Văn An",
    "Trần Thị Bích Ngọc",
    "Lê Hoàng Phúc",
    "Phạm Minh Châu",
    "Hoàng Gia Huy",
    "Võ Thị Thu Trang",
    "Đặng Quốc Bảo",
    "Bùi Thanh Hương",
];

/// Opening sentences of the message text.
const OPENINGS: &[&str] = &[
    "Xin chào shop, tôi muốn hỏi về đơn hàng",
    "Chào bạn, đơn hàng của tôi vẫn chưa được giao, mã đơn",
    "Cho mình hỏi sản phẩm này còn hàng không ạ, mình đã đặt đơn",
    "Tôi cần đổi địa chỉ nhận hàng cho đơn",
    "Shop ơi, mình muốn hủy đơn",
];

/// Filler text appended until the body reaches its size.
const FILLER: &str = " Mình ở quận Hai Bà Trưng, Hà Nội, giao giờ hành chính giúp mình nhé. \
Nếu hết màu xanh thì đổi sang màu trắng cũng được. Cảm ơn shop rất nhiều, \
chúc shop buôn bán đắt hàng và một ngày tốt lành!";

/// Number of distinct contacts the bodies spread over (so conversations and keys vary).
const CONTACTS: usize = 5_000;

/// Request body number `i` of a run: an API-channel message
/// (`{"client_message_id","contact","text"}`) whose `client_message_id` is `{run}-{i}`, so
/// bodies are distinct within a run and across runs with different `run` prefixes. The text is
/// Vietnamese, padded so the JSON is exactly `size` bytes when `size` is large enough (about
/// 200 bytes at least); otherwise it is as short as the fields allow.
pub fn request_body(run: &str, i: usize, size: usize) -> Vec<u8> {
    let contact = i % CONTACTS;
    let base_text = format!("{} #{:07}.", OPENINGS[i % OPENINGS.len()], i);
    let build = |text: &str| {
        let value = json!({
            "contact": {
                "id": format!("zalo-{contact:05}"),
                "name": NAMES[contact % NAMES.len()],
                "language": "vi",
            },
            "text": text,
            "client_message_id": format!("{run}-{i}"),
        });
        // Serializing a `Value` of strings cannot fail.
        serde_json::to_vec(&value).unwrap_or_default()
    };
    let body = build(&base_text);
    if body.len() >= size {
        return body;
    }
    // The text needs no JSON escaping (no quotes, backslashes or control characters), so every
    // byte added to it adds one byte to the body.
    let mut missing = size - body.len();
    let mut text = base_text;
    for c in FILLER.chars().cycle() {
        let len = c.len_utf8();
        if len > missing {
            break;
        }
        text.push(c);
        missing -= len;
        if missing == 0 {
            break;
        }
    }
    text.extend(std::iter::repeat_n('.', missing));
    build(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_requested_size_and_distinct_ids() {
        for i in [0, 1, 7, 12_345, 999_999] {
            let body = request_body("run1", i, DEFAULT_BODY_SIZE);
            assert_eq!(body.len(), DEFAULT_BODY_SIZE);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["client_message_id"], format!("run1-{i}"));
            assert!(!body.contains(&b'\n') && !body.contains(&b']'));
        }
        assert_ne!(request_body("a", 1, 510), request_body("a", 2, 510));
    }
}
