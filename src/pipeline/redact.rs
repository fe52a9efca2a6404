//! Redact: remove configured JSON pointers (passwords, tokens) before a body goes upstream.
//!
//! Only an upstream with `redact` pays for this: the body is parsed into a tree, the pointers
//! removed and the rest re-serialised; every other upstream gets the original bytes untouched.

use bytes::Bytes;
use serde_json::Value;

/// The body with every pointer in `pointers` removed; pointers that match nothing are fine.
/// `body` was validated as JSON already; should it not parse, nothing is sent rather than
/// the unredacted bytes.
pub fn redact(body: &[u8], pointers: &[String]) -> Bytes {
    let Ok(mut redacted) = serde_json::from_slice::<Value>(body) else {
        return Bytes::new();
    };
    for pointer in pointers {
        remove(&mut redacted, pointer);
    }
    // Serialising a Value cannot fail (its map keys are strings).
    Bytes::from(serde_json::to_vec(&redacted).unwrap_or_default())
}

/// Removes the value at `pointer` (RFC 6901): an object member, or an array element.
fn remove(root: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    match root.pointer_mut(parent) {
        Some(Value::Object(members)) => {
            members.remove(&last);
        }
        Some(Value::Array(items)) => {
            if let Ok(index) = last.parse::<usize>() {
                if index < items.len() {
                    items.remove(index);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn removes_members_and_elements_and_ignores_missing_paths() {
        let payload = json!({
            "data": {
                "promoter": {"email": "robin@example.com", "temp_password": "FAKE-pw", "auth_token": "FAKE-t"},
                "list": [1, 2, 3],
                "a/b": {"~x": 1}
            }
        });
        let pointers = [
            "/data/promoter/temp_password",
            "/data/promoter/auth_token",
            "/data/list/1",
            "/data/a~1b/~0x",
            "/data/missing/field",
            "/data/list/99",
        ]
        .map(str::to_owned);
        let body = redact(payload.to_string().as_bytes(), &pointers);
        let redacted: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            redacted,
            json!({"data": {"promoter": {"email": "robin@example.com"}, "list": [1, 3], "a/b": {}}})
        );
        assert!(!String::from_utf8_lossy(&body).contains("FAKE"));
    }
}
