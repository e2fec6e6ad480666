//! Live chat WebSocket text frames from the widget (`protocol::parse`, what the socket loop
//! calls on every frame) and the cursors they carry.
//!
//! Invariants: an accepted message has a valid client id and non-blank text within the limit;
//! accepted cursors print back as they parse; error frames are JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omni_livechat::protocol::{error_frame, parse, ClientFrame, Cursor};

const MAX_TEXT_CHARS: usize = 2000;

fn check_cursor(text: &str) {
    if let Ok(cursor) = text.parse::<Cursor>() {
        assert!(cursor.inbound >= -1 && cursor.outbound >= -1);
        assert_eq!(
            cursor.to_string().parse::<Cursor>(),
            Ok(cursor),
            "cursor round-trips"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames are UTF-8 (tungstenite refuses others before us).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_cursor(text);
    match parse(text, MAX_TEXT_CHARS) {
        Ok(ClientFrame::Message { client_id, text }) => {
            assert!(!client_id.is_empty() && client_id.len() <= 64);
            assert!(!text.trim().is_empty());
            assert!(text.chars().count() <= MAX_TEXT_CHARS);
        }
        Ok(ClientFrame::Read { cursor }) => {
            assert!(cursor.parse::<Cursor>().is_ok());
            check_cursor(&cursor);
        }
        Ok(ClientFrame::Resume { after }) => {
            assert!(after.parse::<Cursor>().is_ok());
            check_cursor(&after);
        }
        Ok(ClientFrame::Typing { .. } | ClientFrame::Ping | ClientFrame::Leave {}) => {}
        Err(err) => {
            let frame: serde_json::Value = serde_json::from_str(&error_frame(&err, Some(text)))
                .expect("error frames are JSON");
            assert_eq!(frame["code"].as_str(), Some(err.code));
        }
    }
});
