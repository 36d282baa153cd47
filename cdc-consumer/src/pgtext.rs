//! PostgreSQL's text output formats that pgoutput hands us, turned into what the event needs.
//!
//! The replication session runs with `DateStyle=ISO`, so a `timestamptz` arrives as
//! `2026-01-17 00:45:42.735266-03`; clients get RFC 3339, `2026-01-17T00:45:42.735266-03:00`.

/// RFC 3339 for an ISO-style `timestamptz`, or `None` for values RFC 3339 cannot express as they
/// are (`infinity`, BC dates, years past 9999, offsets with seconds from before 1914).
pub fn timestamptz_to_rfc3339(text: &str) -> Option<String> {
    let (date, rest) = text.split_once(' ')?;
    let date_ok = date.len() == 10
        && date.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    if !date_ok {
        return None;
    }
    let sign_at = rest.rfind(['+', '-'])?;
    let (time, offset) = rest.split_at(sign_at);
    let time_ok = time.len() >= 8
        && time.bytes().enumerate().all(|(i, b)| match i {
            2 | 5 => b == b':',
            8 => b == b'.',
            _ => b.is_ascii_digit(),
        });
    if !time_ok {
        return None;
    }
    let offset = match offset.len() {
        3 => format!("{offset}:00"),
        6 if offset.as_bytes()[3] == b':' => offset.to_owned(),
        _ => return None,
    };
    if !offset[1..3].bytes().all(|b| b.is_ascii_digit())
        || !offset[4..].bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some(format!("{date}T{time}{offset}"))
}

/// Elements of a one-dimensional `text[]` in array output syntax: `{a,"b c",NULL}`.
/// `NULL` elements are rejected (`None`), as is anything malformed.
pub fn text_array(text: &str) -> Option<Vec<String>> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    let mut items = Vec::new();
    if inner.is_empty() {
        return Some(items);
    }
    let mut chars = inner.chars().peekable();
    loop {
        let mut item = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => item.push(chars.next()?),
                    c => item.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if matches!(c, '"' | '{' | '}' | '\\') {
                    return None;
                }
                item.push(c);
                chars.next();
            }
            if item == "NULL" {
                return None;
            }
        }
        items.push(item);
        match chars.next() {
            None => return Some(items),
            Some(',') => continue,
            Some(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_become_rfc3339() {
        let cases = [
            (
                "2026-01-17 00:45:42.735266-03",
                "2026-01-17T00:45:42.735266-03:00",
            ),
            ("2026-01-17 00:45:42-03", "2026-01-17T00:45:42-03:00"),
            ("2026-01-17 03:45:42.1+00", "2026-01-17T03:45:42.1+00:00"),
            ("2026-01-17 09:15:42+05:30", "2026-01-17T09:15:42+05:30"),
        ];
        for (pg, rfc) in cases {
            assert_eq!(timestamptz_to_rfc3339(pg).as_deref(), Some(rfc), "{pg}");
        }
    }

    #[test]
    fn values_rfc3339_cannot_express_are_refused() {
        for pg in [
            "infinity",
            "-infinity",
            "0044-03-15 12:00:00+00 BC",
            "10000-01-01 00:00:00+00",
            "1900-01-01 00:00:00-03:06:28",
            "2026-01-17",
            "2026-01-17 00:45-03",
            "2026-01-17 00:45:42",
            "",
        ] {
            assert_eq!(timestamptz_to_rfc3339(pg), None, "{pg}");
        }
    }

    #[test]
    fn arrays() {
        assert_eq!(text_array("{}"), Some(vec![]));
        assert_eq!(
            text_array("{game:crash,type:color}"),
            Some(vec!["game:crash".into(), "type:color".into()])
        );
        assert_eq!(
            text_array(r#"{"a b","c\"d",e}"#),
            Some(vec!["a b".into(), "c\"d".into(), "e".into()])
        );
        for bad in [
            "", "{", "{a", "{NULL}", "{a,NULL}", r#"{"a}"#, "{a}b", "{{a}}",
        ] {
            assert_eq!(text_array(bad), None, "{bad}");
        }
    }
}
