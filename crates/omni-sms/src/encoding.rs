//! How a text will travel as SMS: GSM-7 or UCS-2, how many units, how many segments.
//!
//! Segments are what a customer pays for and what `DeliveryUpdate::segments` reports, and the
//! encoding decides the `IsUnicode`/`type=unicode` flags providers want on send.
//!
//! Design:
//! - The text is normalized to NFC first: a decomposed "à" (`a` + U+0300) is GSM-7's `à`, and
//!   Vietnamese typed on some keyboards arrives decomposed.
//! - GSM-7 when every character is in the GSM 03.38 default alphabet or its extension table;
//!   one other character makes the whole message UCS-2. Extension characters
//!   (`{ } [ ] ~ | ^ € \` and form feed) cost two septets (escape + code). Only the mapping of
//!   Unicode's GSM0338 table is used, so `Ç` is GSM-7 but `ç` is not.
//! - Units: septets for GSM-7, UTF-16 code units for UCS-2 (a character outside the BMP, such
//!   as an emoji, costs two).
//! - Segments: one when the units fit 160 (GSM-7) or 70 (UCS-2); otherwise parts of 153 or 67
//!   (the rest is the concatenation header), filled greedily, where an escape pair or a
//!   surrogate pair never straddles two parts — so a part may carry one unit less.
//! - Empty text: 0 units and 0 segments (GSM-7). Nothing would be sent; providers refuse an
//!   empty SMS, so callers should refuse it before sending.

use unicode_normalization::UnicodeNormalization;

/// The GSM 03.38 default alphabet, in code order, without the escape code 0x1B.
const GSM7_BASIC: &str = concat!(
    "@£$¥èéùìòÇ\nØø\rÅå",
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ",
    " !\"#¤%&'()*+,-./",
    "0123456789:;<=>?",
    "¡ABCDEFGHIJKLMNO",
    "PQRSTUVWXYZÄÖÑÜ§",
    "¿abcdefghijklmno",
    "pqrstuvwxyzäöñüà",
);

/// The GSM 03.38 extension table: each costs the escape septet plus its own.
const GSM7_EXTENSION: &str = "\u{0C}^{}\\[~]|€";

/// Units in a single-part GSM-7 message.
pub const GSM7_SINGLE: usize = 160;
/// Units per part of a multipart GSM-7 message.
pub const GSM7_MULTIPART: usize = 153;
/// Units in a single-part UCS-2 message.
pub const UCS2_SINGLE: usize = 70;
/// Units per part of a multipart UCS-2 message.
pub const UCS2_MULTIPART: usize = 67;

/// The character set a message is sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SmsEncoding {
    /// The 7-bit GSM default alphabet: 160 characters per SMS.
    Gsm7,
    /// UTF-16 (UCS-2 on the wire): 70 units per SMS, needed for Vietnamese and emoji.
    Ucs2,
}

impl SmsEncoding {
    /// True for UCS-2, the flag providers call "unicode" (eSMS `IsUnicode`, Vonage
    /// `type=unicode`).
    pub fn is_unicode(self) -> bool {
        self == Self::Ucs2
    }
}

/// The result of laying a text out as SMS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsLayout {
    /// The encoding the text needs.
    pub encoding: SmsEncoding,
    /// Septets (GSM-7) or UTF-16 code units (UCS-2).
    pub units: usize,
    /// Parts the text is sent as (0 for empty text).
    pub segments: usize,
    /// The NFC-normalized text that was measured: send this one, so the count holds.
    pub text: String,
}

/// Normalizes `text` to NFC and measures it (rules in the module docs).
pub fn layout(text: &str) -> SmsLayout {
    let text: String = text.nfc().collect();
    let gsm_costs: Option<Vec<usize>> = text.chars().map(gsm7_septets).collect();
    let (encoding, costs, single, multipart) = match gsm_costs {
        Some(costs) => (SmsEncoding::Gsm7, costs, GSM7_SINGLE, GSM7_MULTIPART),
        None => (
            SmsEncoding::Ucs2,
            text.chars().map(char::len_utf16).collect(),
            UCS2_SINGLE,
            UCS2_MULTIPART,
        ),
    };
    let units = costs.iter().sum();
    let segments = count_segments(&costs, units, single, multipart);
    SmsLayout {
        encoding,
        units,
        segments,
        text,
    }
}

/// Septets `c` costs in GSM-7: 1 in the default alphabet, 2 in the extension table, `None`
/// when GSM-7 cannot carry it.
pub fn gsm7_septets(c: char) -> Option<usize> {
    if GSM7_BASIC.contains(c) {
        Some(1)
    } else if GSM7_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// Greedy packing: a character that does not fit what is left of a part opens the next one.
fn count_segments(costs: &[usize], units: usize, single: usize, multipart: usize) -> usize {
    if units == 0 {
        return 0;
    }
    if units <= single {
        return 1;
    }
    let mut segments = 1;
    let mut used = 0;
    for &cost in costs {
        if used + cost > multipart {
            segments += 1;
            used = 0;
        }
        used += cost;
    }
    segments
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_default_alphabet_has_127_characters_and_the_extension_10() {
        assert_eq!(GSM7_BASIC.chars().count(), 127);
        assert_eq!(GSM7_EXTENSION.chars().count(), 10);
    }

    #[test]
    fn vietnamese_text_needs_ucs2() {
        let l = layout("Xin chào, đơn hàng của bạn đã được giao");
        assert_eq!(l.encoding, SmsEncoding::Ucs2);
        assert_eq!(l.units, 39);
        assert_eq!(l.segments, 1);
        assert!(l.encoding.is_unicode());
    }

    #[test]
    fn ascii_fits_160_in_one_part_and_161_needs_two() {
        let one = layout(&"a".repeat(160));
        assert_eq!(
            (one.encoding, one.units, one.segments),
            (SmsEncoding::Gsm7, 160, 1)
        );
        let two = layout(&"a".repeat(161));
        assert_eq!((two.units, two.segments), (161, 2));
        assert_eq!(layout(&"a".repeat(306)).segments, 2);
        assert_eq!(layout(&"a".repeat(307)).segments, 3);
    }

    #[test]
    fn extension_characters_cost_two_septets() {
        let l = layout("{€}");
        assert_eq!((l.encoding, l.units), (SmsEncoding::Gsm7, 6));
        // 80 euro signs are 160 septets: still one part; 81 need two.
        assert_eq!(layout(&"€".repeat(80)).segments, 1);
        assert_eq!(layout(&"€".repeat(81)).segments, 2);
    }

    #[test]
    fn an_escape_pair_is_not_split_at_the_153_boundary() {
        // 152 + 2 + 152 = 306 septets: two parts by arithmetic, but the € cannot start in the
        // last septet of part one, so part two is € + 151 'a' and one 'a' spills into a third.
        let text = format!("{}€{}", "a".repeat(152), "a".repeat(152));
        let l = layout(&text);
        assert_eq!((l.units, l.segments), (306, 3));
        // Moving the € one place earlier lets it fit: 151 + 2 = 153.
        let fits = format!("{}€{}", "a".repeat(151), "a".repeat(153));
        assert_eq!(layout(&fits).segments, 2);
    }

    #[test]
    fn emoji_costs_two_ucs2_units_and_its_surrogate_pair_is_not_split() {
        let l = layout("Hi 😀");
        assert_eq!((l.encoding, l.units, l.segments), (SmsEncoding::Ucs2, 5, 1));
        // 66 + 2 + 66 = 134 units: the emoji does not fit unit 67 of part one.
        let text = format!("{}😀{}", "ạ".repeat(66), "ạ".repeat(66));
        let split = layout(&text);
        assert_eq!((split.units, split.segments), (134, 3));
        let fits = format!("{}😀{}", "ạ".repeat(65), "ạ".repeat(67));
        assert_eq!(layout(&fits).segments, 2);
    }

    #[test]
    fn ucs2_fits_70_in_one_part_and_71_needs_two() {
        assert_eq!(layout(&"ạ".repeat(70)).segments, 1);
        assert_eq!(layout(&"ạ".repeat(71)).segments, 2);
        assert_eq!(layout(&"ạ".repeat(134)).segments, 2);
        assert_eq!(layout(&"ạ".repeat(135)).segments, 3);
    }

    #[test]
    fn decomposed_input_measures_like_composed_input() {
        let composed = "Xin chào, đơn hàng của bạn đã được giao";
        let decomposed: String = composed.nfd().collect();
        assert_ne!(decomposed, composed);
        assert_eq!(layout(&decomposed), layout(composed));
        // A decomposed GSM-7 letter comes back into GSM-7.
        assert_eq!(layout("a\u{300}").encoding, SmsEncoding::Gsm7);
        assert_eq!(layout("a\u{300}").text, "à");
    }

    #[test]
    fn accented_letters_of_the_gsm_alphabet_stay_gsm7_but_hook_above_does_not() {
        let l = layout("àèéìòù");
        assert_eq!((l.encoding, l.units), (SmsEncoding::Gsm7, 6));
        assert_eq!(layout("ả").encoding, SmsEncoding::Ucs2);
        assert_eq!(layout("ç").encoding, SmsEncoding::Ucs2);
        assert_eq!(layout("Ç").encoding, SmsEncoding::Gsm7);
    }

    #[test]
    fn empty_text_is_zero_units_and_zero_segments() {
        let l = layout("");
        assert_eq!((l.encoding, l.units, l.segments), (SmsEncoding::Gsm7, 0, 0));
    }

    proptest! {
        #[test]
        fn segments_cover_the_units(text in "\\PC{0,400}") {
            let l = layout(&text);
            let (single, multi) = match l.encoding {
                SmsEncoding::Gsm7 => (GSM7_SINGLE, GSM7_MULTIPART),
                SmsEncoding::Ucs2 => (UCS2_SINGLE, UCS2_MULTIPART),
            };
            if l.units == 0 {
                prop_assert_eq!(l.segments, 0);
            } else if l.units <= single {
                prop_assert_eq!(l.segments, 1);
            } else {
                // At least the arithmetic minimum, at most one lost unit per part.
                prop_assert!(l.segments >= l.units.div_ceil(multi));
                prop_assert!(l.segments <= l.units.div_ceil(multi - 1));
            }
        }
    }
}
