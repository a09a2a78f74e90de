//! Line charts as standalone SVG, written by hand: axes with ticks, a grid, one polyline with
//! point markers per series, and a legend.

use std::fmt::Write;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 56.0;

/// One line of a chart.
pub struct Series {
    pub name: String,
    /// `(x, y)`; points whose y is missing are left out (the line joins its neighbours).
    pub points: Vec<(f64, Option<f64>)>,
    pub color: &'static str,
    pub dashed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Linear,
    /// Base 10; for values that span decades, such as latencies.
    Log,
}

pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub y_scale: Scale,
    pub series: Vec<Series>,
}

/// `1, 2, 5 x 10^k` ticks covering `[min, max]`, about `target` of them.
fn linear_ticks(min: f64, max: f64, target: usize) -> Vec<f64> {
    let span = (max - min).max(f64::EPSILON);
    let raw = span / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (min / step).floor() as i64;
    let last = (max / step).ceil() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// Decades `10^k` covering `[min, max]` (both positive), with `2` and `5 x 10^k` between them
/// when there are at most two decades.
fn log_ticks(min: f64, max: f64) -> Vec<f64> {
    let first = min.log10().floor() as i32;
    let last = (max.log10().ceil() as i32).max(first + 1);
    let multiples: &[f64] = match last - first {
        1 | 2 => &[1.0, 2.0, 5.0],
        _ => &[1.0],
    };
    let mut ticks: Vec<f64> = (first..last)
        .flat_map(|k| multiples.iter().map(move |m| m * 10f64.powi(k)))
        .collect();
    ticks.push(10f64.powi(last));
    ticks
}

/// A number as a tick label: no trailing zeros, thousands as `k`.
pub fn label(value: f64) -> String {
    let abs = value.abs();
    if abs >= 10_000.0 {
        format!("{}k", trim(value / 1000.0))
    } else {
        trim(value)
    }
}

fn trim(value: f64) -> String {
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    match text {
        "-0" => "0".to_owned(),
        other => other.to_owned(),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders `chart`; a chart without points still renders (axes and a note).
pub fn render(chart: &Chart) -> String {
    let log = chart.y_scale == Scale::Log;
    let points: Vec<(f64, f64)> = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter_map(|&(x, y)| Some((x, y?)))
        .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log || *y > 0.0))
        .collect();
    let (mut x_min, mut x_max) = min_max(points.iter().map(|p| p.0)).unwrap_or((0.0, 1.0));
    if x_max <= x_min {
        x_min -= 1.0;
        x_max += 1.0;
    }
    let (y_lo, y_hi) = min_max(points.iter().map(|p| p.1)).unwrap_or((1.0, 10.0));
    let x_ticks = linear_ticks(x_min, x_max, 6);
    let y_ticks = match log {
        true => log_ticks(y_lo, y_hi),
        false => linear_ticks(0.0, y_hi.max(1.0), 6),
    };
    let (x0, x1) = (x_ticks[0], *x_ticks.last().expect("ticks"));
    let (y0, y1) = (y_ticks[0], *y_ticks.last().expect("ticks"));
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * plot_w;
    let sy = |y: f64| {
        let t = match log {
            true => (y.log10() - y0.log10()) / (y1.log10() - y0.log10()),
            false => (y - y0) / (y1 - y0),
        };
        TOP + plot_h - t * plot_h
    };

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        LEFT + plot_w / 2.0,
        escape(&chart.title)
    );
    for &x in &x_ticks {
        let px = sx(x);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#e5e5e5"/>"##,
            TOP + plot_h
        );
        let _ = writeln!(
            svg,
            r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            TOP + plot_h + 18.0,
            label(x)
        );
    }
    for &y in &y_ticks {
        let py = sy(y);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e5e5e5"/>"##,
            LEFT + plot_w
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 8.0,
            py + 4.0,
            label(y)
        );
    }
    let _ = writeln!(
        svg,
        r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 14.0,
        escape(&chart.x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        escape(&chart.y_label)
    );
    if points.is_empty() {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">no data</text>"#,
            LEFT + plot_w / 2.0,
            TOP + plot_h / 2.0
        );
    }
    for (i, series) in chart.series.iter().enumerate() {
        let visible: Vec<(f64, f64)> = series
            .points
            .iter()
            .filter_map(|&(x, y)| Some((x, y?)))
            .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log || *y > 0.0))
            .map(|(x, y)| (sx(x), sy(y)))
            .collect();
        let dash = match series.dashed {
            true => r#" stroke-dasharray="6 4""#,
            false => "",
        };
        let name = escape(&series.name);
        let _ = writeln!(svg, r#"<g class="series"><title>{name}</title>"#);
        if visible.len() >= 2 {
            let coords: Vec<String> = visible
                .iter()
                .map(|(x, y)| format!("{x:.1},{y:.1}"))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
                coords.join(" "),
                series.color
            );
        }
        for (x, y) in &visible {
            let _ = writeln!(
                svg,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{}"/>"#,
                series.color
            );
        }
        let _ = writeln!(svg, "</g>");
        let ly = TOP + 14.0 + i as f64 * 22.0;
        let lx = WIDTH - RIGHT + 16.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/>"#,
            lx + 28.0,
            series.color
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}">{name}</text>"#,
            lx + 36.0,
            ly + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that every element is closed in order, quotes are balanced and text is escaped
    /// (enough XML to catch a broken chart).
    fn assert_well_formed(svg: &str) {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').expect("an unclosed tag") + start;
            let tag = &rest[start + 1..end];
            assert_eq!(
                tag.matches('"').count() % 2,
                0,
                "unbalanced quotes in <{tag}>"
            );
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().expect("a tag name");
                stack.push(name.to_owned());
            }
            let text = &rest[end + 1..];
            let content = &text[..text.find('<').unwrap_or(text.len())];
            for (i, _) in content.match_indices('&') {
                let entity = &content[i..];
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;"]
                        .iter()
                        .any(|e| entity.starts_with(e)),
                    "unescaped & in {content:?}"
                );
            }
            rest = text;
        }
        assert!(stack.is_empty(), "unclosed elements {stack:?}");
    }

    fn chart(scale: Scale) -> Chart {
        Chart {
            title: "Latency <vs> rate & more".into(),
            x_label: "offered (orders/s)".into(),
            y_label: "latency (ms)".into(),
            y_scale: scale,
            series: vec![
                Series {
                    name: "saga p50".into(),
                    points: vec![(20.0, Some(600.0)), (100.0, Some(650.0)), (300.0, None)],
                    color: "#1f77b4",
                    dashed: false,
                },
                Series {
                    name: "chain p99".into(),
                    points: vec![(20.0, Some(90.0))],
                    color: "#ff7f0e",
                    dashed: true,
                },
            ],
        }
    }

    #[test]
    fn renders_well_formed_svg_with_every_series() {
        for scale in [Scale::Log, Scale::Linear] {
            let svg = render(&chart(scale));
            assert!(svg.starts_with("<svg "));
            assert!(svg.trim_end().ends_with("</svg>"));
            assert_well_formed(&svg);
            assert!(svg.contains("saga p50") && svg.contains("chain p99"));
            assert!(svg.contains("Latency &lt;vs&gt; rate &amp; more"));
            assert_eq!(
                svg.matches("<polyline").count(),
                1,
                "one series has one point"
            );
            assert_eq!(svg.matches("<circle").count(), 3);
            assert!(!svg.contains("NaN") && !svg.contains("inf"));
        }
    }

    #[test]
    fn an_empty_chart_still_renders() {
        let svg = render(&Chart {
            series: Vec::new(),
            ..chart(Scale::Log)
        });
        assert_well_formed(&svg);
        assert!(svg.contains("no data"));
    }

    #[test]
    fn ticks_and_labels() {
        assert_eq!(
            linear_ticks(20.0, 300.0, 6),
            [0.0, 50.0, 100.0, 150.0, 200.0, 250.0, 300.0]
        );
        assert_eq!(log_ticks(80.0, 1500.0), [10.0, 100.0, 1000.0, 10000.0]);
        assert_eq!(log_ticks(100.0, 100.0), [100.0, 200.0, 500.0, 1000.0]);
        assert_eq!(log_ticks(130.0, 800.0), [100.0, 200.0, 500.0, 1000.0]);
        assert_eq!(label(2.5), "2.5");
        assert_eq!(label(300.0), "300");
        assert_eq!(label(20_000.0), "20k");
    }
}
