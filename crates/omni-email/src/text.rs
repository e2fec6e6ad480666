//! Plain text for the event: line endings normalized, quoted reply history trimmed, size
//! bounded. Pure functions over strings.
//!
//! Trimming cuts at the first line that introduces quoted history — an attribution line
//! (`On … wrote:`, Gmail's Vietnamese `Vào … đã viết:`, French, German), an Outlook header
//! block (`From:`/`Từ:` followed by `Sent:`/`Đã gửi:` or `To:`), `-----Original Message-----`,
//! or Outlook's underscore rule before a header block — and then drops lines quoted with `>`.
//! If nothing is left (a mail that is all quote), the untrimmed text is used. The untrimmed
//! mail is kept in the attachment store as `original.eml` (see the crate docs).

/// The longest `text` put on an event, in bytes (Kafka records stay far below 1 MB).
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// The longest subject put on an event, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 998;

/// Marks text that was cut at [`MAX_TEXT_BYTES`].
pub const TRUNCATED_MARK: &str = "\n[…]";

/// CRLF and CR to LF, trailing spaces per line dropped, outer blank lines trimmed.
pub fn normalize(text: &str) -> String {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    lines.join("\n").trim_matches('\n').to_owned()
}

/// The customer's own words: `text` without quoted history (see the module docs).
pub fn trim_quoted(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let cut = history_start(&lines).unwrap_or(lines.len());
    let kept: Vec<&str> = lines[..cut]
        .iter()
        .copied()
        .filter(|l| !l.trim_start().starts_with('>'))
        .collect();
    let trimmed = kept.join("\n").trim().to_owned();
    if trimmed.is_empty() {
        text.trim().to_owned()
    } else {
        trimmed
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, appending `mark` when it cut.
pub fn truncate(s: &str, max: usize, mark: &str) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(mark.len());
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{mark}", &s[..end])
}

/// The index of the first line of quoted history, if any.
fn history_start(lines: &[&str]) -> Option<usize> {
    for (i, raw) in lines.iter().enumerate() {
        let line = raw.trim();
        let lower = line.to_lowercase();
        if is_separator(&lower) {
            return Some(i);
        }
        if ends_attribution(&lower) {
            // The attribution may wrap: "On Mon, 1 Jan 2024 at 10:00, Nguyen Van A\n<a@b> wrote:".
            if !starts_attribution(&lower) && i > 0 {
                let prev = lines[i - 1].trim().to_lowercase();
                if starts_attribution(&prev) {
                    return Some(i - 1);
                }
            }
            return Some(i);
        }
        if is_header_line(&lower, &["from:", "từ:", "de:", "von:"])
            && lines[i + 1..].iter().take(4).any(|l| {
                is_header_line(
                    &l.trim().to_lowercase(),
                    &[
                        "sent:",
                        "đã gửi:",
                        "to:",
                        "đến:",
                        "date:",
                        "ngày:",
                        "envoyé :",
                        "gesendet:",
                    ],
                )
            })
        {
            // An Outlook rule line just above belongs to the history too.
            if i > 0 && lines[i - 1].trim().starts_with("____") {
                return Some(i - 1);
            }
            return Some(i);
        }
    }
    None
}

fn is_separator(lower: &str) -> bool {
    let dashes = lower.trim_matches(|c| c == '-' || c == ' ');
    (lower.starts_with("-----") || lower.starts_with("- - -"))
        && matches!(
            dashes,
            "original message"
                | "thư gốc"
                | "tin nhắn gốc"
                | "ursprüngliche nachricht"
                | "message d'origine"
        )
}

fn starts_attribution(lower: &str) -> bool {
    ["on ", "vào ", "le ", "am ", "el "]
        .iter()
        .any(|p| lower.starts_with(p))
}

fn ends_attribution(lower: &str) -> bool {
    let ends = [
        "wrote:",
        "đã viết:",
        "a écrit :",
        "a écrit:",
        "schrieb:",
        "escribió:",
    ]
    .iter()
    .any(|e| lower.ends_with(e));
    ends && (starts_attribution(lower)
        || lower.contains('@')
        || lower.contains('<')
        || lower.len() < 200)
}

fn is_header_line(lower: &str, names: &[&str]) -> bool {
    let l = lower.trim_start_matches('*');
    names.iter().any(|n| l.starts_with(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gmail_vietnamese_attribution_and_quotes_are_trimmed() {
        let text = "Dạ em muốn đổi size áo ạ.\nCảm ơn shop!\n\nVào Th 2, 1 thg 7, 2024 lúc 10:00 CSKH Shop <support@shop.vn>\nđã viết:\n> Chào anh/chị,\n> Đơn hàng đã giao.\n";
        assert_eq!(trim_quoted(text), "Dạ em muốn đổi size áo ạ.\nCảm ơn shop!");
    }

    #[test]
    fn english_attribution_on_one_line() {
        let text = "Thanks, that works.\n\nOn Mon, Jul 1, 2024 at 10:00 AM Shop <s@shop.vn> wrote:\n> old text\n>> older";
        assert_eq!(trim_quoted(text), "Thanks, that works.");
    }

    #[test]
    fn outlook_header_block_and_rule_are_trimmed() {
        let text = "Vâng, tôi đồng ý.\n\n________________________________\nTừ: CSKH Shop <support@shop.vn>\nĐã gửi: Thứ Hai, 1 tháng 7, 2024 10:00\nĐến: Khách\nChủ đề: Đơn hàng\n\nNội dung cũ";
        assert_eq!(trim_quoted(text), "Vâng, tôi đồng ý.");
        let text = "Yes.\n-----Original Message-----\nFrom: a\nSent: b\nold";
        assert_eq!(trim_quoted(text), "Yes.");
    }

    #[test]
    fn interleaved_answers_keep_the_customers_lines() {
        let text = "> Size nào ạ?\nSize M.\n> Màu gì ạ?\nMàu đen.";
        assert_eq!(trim_quoted(text), "Size M.\nMàu đen.");
    }

    #[test]
    fn an_all_quoted_mail_keeps_its_text() {
        assert_eq!(trim_quoted("> only a quote"), "> only a quote");
        assert_eq!(trim_quoted(""), "");
    }

    #[test]
    fn a_from_line_alone_is_not_history() {
        let text = "From: my new address\nplease update it";
        assert_eq!(trim_quoted(text), text);
    }

    #[test]
    fn normalize_and_truncate_respect_characters() {
        assert_eq!(normalize("a \r\nb\r\r\n\n"), "a\nb");
        let s = "ạ".repeat(10); // 3 bytes each
        let t = truncate(&s, 10, "…");
        assert!(t.len() <= 10, "{t}");
        assert!(t.ends_with('…'));
        assert_eq!(truncate("short", 10, "…"), "short");
    }
}
