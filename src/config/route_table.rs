//! The route table printed by `hookgate check`.

use std::fmt;

use http::Uri;

use super::{Config, TypePattern};

impl fmt::Display for TypePattern {
    /// As written in the config: `*`, `fulfilment_pending`, `lead_*`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TypePattern::Any => f.write_str("*"),
            TypePattern::Exact(text) => f.write_str(text),
            TypePattern::Glob(parts) => f.write_str(&parts.join("*")),
        }
    }
}

impl Config {
    /// A human-readable summary for `hookgate check`: a line listing the sources, one line
    /// per route (index, event types, source, match conditions, `->` upstreams with URLs),
    /// and what unmatched events get. Contains no secrets: URL queries and user info are
    /// elided, headers are not shown.
    pub fn route_table(&self) -> String {
        let sources: Vec<String> = self
            .sources
            .iter()
            .map(|s| format!("{} ({})", s.name, s.path))
            .collect();
        let mut out = format!("sources: {}\n", sources.join(", "));
        if self.routes.is_empty() {
            out.push_str("routes: none\n");
        }

        // Columns: index, event types, source, match conditions; padded so that the
        // `->` targets line up.
        let rows: Vec<([String; 4], String)> = self
            .routes
            .iter()
            .map(|route| {
                let types: Vec<String> = route.event_types.iter().map(|t| t.to_string()).collect();
                let matches: Vec<String> = route
                    .matches
                    .iter()
                    .map(|(pointer, value)| format!("{pointer} = {value}"))
                    .collect();
                let targets: Vec<String> = route
                    .upstreams
                    .iter()
                    .filter_map(|&i| self.upstreams.get(i))
                    .map(|u| format!("{} ({})", u.name, display_url(&u.url)))
                    .collect();
                let matches = if matches.is_empty() {
                    "match: -".to_owned()
                } else {
                    format!("match: {}", matches.join(", "))
                };
                let cells = [
                    format!("#{}", route.index),
                    types.join(", "),
                    format!("source: {}", route.source.as_deref().unwrap_or("*")),
                    matches,
                ];
                (cells, targets.join(", "))
            })
            .collect();
        let mut widths = [0; 4];
        for (cells, _) in &rows {
            for (width, cell) in widths.iter_mut().zip(cells) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for (cells, targets) in &rows {
            out.push_str("  ");
            for (width, cell) in widths.iter().zip(cells) {
                out.push_str(&format!("{cell:<width$}  "));
            }
            out.push_str(&format!("-> {targets}\n"));
        }
        out.push_str(&format!(
            "no route matches: answer {}\n",
            self.server.unrouted_status.as_u16()
        ));
        out
    }
}

/// `scheme://host[:port]/path`, with any query shown as `?…`: user info and queries may
/// carry credentials, and `check` output ends up in logs.
fn display_url(uri: &Uri) -> String {
    let mut text = format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("?"),
        uri.host().unwrap_or("?")
    );
    if let Some(port) = uri.port_u16() {
        text.push_str(&format!(":{port}"));
    }
    text.push_str(uri.path());
    if uri.query().is_some() {
        text.push_str("?…");
    }
    text
}

#[cfg(test)]
mod tests {
    use crate::config::load::tests::{load, MINIMAL};

    #[test]
    fn lists_sources_then_one_aligned_line_per_route() {
        let text = format!(
            "{MINIMAL}\n[upstreams.crm]\nurl = \"https://user:pw@crm.example:8443/in?key=s3cret\"\n\n\
             [[routes]]\nevent_type = [\"lead_*\", \"*\"]\nsource = \"fp\"\n\
             match = {{ \"/data/campaign/id\" = 41001, \"/data/plan\" = \"gold\" }}\n\
             upstreams = [\"crm\", \"billing\"]\n"
        );
        let config = load(&text).unwrap_or_else(|e| panic!("{e}"));
        let table = config.route_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines,
            [
                "sources: fp (/webhooks/fp)",
                "  #0  fulfilment_pending  source: *   match: -                                               -> billing (http://127.0.0.1:3000/hook)",
                "  #1  lead_*, *           source: fp  match: /data/campaign/id = 41001, /data/plan = \"gold\"  -> crm (https://crm.example:8443/in?…), billing (http://127.0.0.1:3000/hook)",
                "no route matches: answer 202",
            ]
        );
        assert!(!table.contains("s3cret") && !table.contains("pw@"));
    }
}
