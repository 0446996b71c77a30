//! `attrib compare --html`: the comparison as one self-contained page.
//!
//! No script, no network: the charts are inline SVG drawn by `plotters` (its SVG
//! backend), the style is inline, and a Content-Security-Policy of `default-src 'none'`
//! makes the browser refuse (and log) anything the page would try to load.
//!
//! Per currency: totals (paid against each shadow model), the top creators, paid
//! commissions and reversals per day, and, when the paid file has lock records, the
//! lock and refund state (locked, pending, reversed) of every model.

use std::fmt::Write as _;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use super::{Amounts, Comparison, Row};
use crate::model::Currency;

/// One chart's data: category names on the x axis, and named series of one value per
/// category (minor units), drawn as grouped bars.
struct Bars<'a> {
    title: &'a str,
    categories: Vec<String>,
    series: Vec<(String, Vec<i64>)>,
    size: (u32, u32),
}

/// Renders a grouped bar chart to an SVG string.
fn bar_chart(b: &Bars<'_>) -> Result<String, String> {
    let per = b.series.len().max(1) + 1; // bars of a category, then a gap
    let slots = (b.categories.len().max(1) * per) as i32;
    let values = b.series.iter().flat_map(|(_, v)| v.iter().copied());
    let (lo, hi) = values.fold((0i64, 0i64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let pad = ((hi - lo) / 20).max(1);
    let (lo, hi) = (if lo < 0 { lo - pad } else { 0 }, hi + pad);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, b.size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(b.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(if b.categories.len() > 6 { 70 } else { 36 })
            .y_label_area_size(80)
            .build_cartesian_2d((0..slots - 1).into_segmented(), lo..hi)
            .map_err(|e| e.to_string())?;
        let label_at = (per as i32 - 1) / 2;
        let names = &b.categories;
        let formatter = |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(i) if i % per as i32 == label_at => {
                names.get((i / per as i32) as usize).cloned().unwrap_or_default()
            }
            _ => String::new(),
        };
        let mut mesh = chart.configure_mesh();
        mesh.disable_x_mesh().x_labels(slots as usize + 1).x_label_formatter(&formatter).y_desc("minor units");
        if b.categories.len() > 6 {
            mesh.x_label_style(("sans-serif", 12).into_font().transform(FontTransform::Rotate90));
        }
        mesh.draw().map_err(|e| e.to_string())?;
        for (j, (name, values)) in b.series.iter().enumerate() {
            let color = Palette99::pick(j).to_rgba();
            let bars = values.iter().enumerate().map(move |(i, &v)| {
                let x = (i * per + j) as i32;
                Rectangle::new([(SegmentValue::Exact(x), 0), (SegmentValue::Exact(x + 1), v)], color.filled())
            });
            chart
                .draw_series(bars)
                .map_err(|e| e.to_string())?
                .label(name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01, UTC).
fn date(day: i64) -> String {
    chrono::DateTime::from_timestamp(day.saturating_mul(86_400), 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| format!("day {day}"))
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 8px}\
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f3f3}\
figure{margin:1em 0}.chart svg{max-width:100%;height:auto}.neg{color:#b00}.pos{color:#070}";

/// The page: `top` creators per currency in the creator chart and table (0: all).
pub fn render(c: &Comparison, top: usize) -> Result<String, String> {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <title>attrib compare</title><style>{STYLE}</style></head><body>\n<h1>attrib compare</h1>\n"
    );
    let models: Vec<&str> = c.models.iter().map(|m| m.as_str()).collect();
    let _ = writeln!(
        h,
        "<p>{} against shadow models: {}. Amounts are net commissions (commissions + reversals + \
         adjustments) in minor units; diff = model − paid.</p>",
        esc(&c.paid_label()),
        if models.is_empty() { "none".to_string() } else { models.join(", ") }
    );
    if c.totals.is_empty() {
        h.push_str("<p>No records.</p>\n");
    }
    let mut labels = vec![c.paid_label()];
    labels.extend(models.iter().map(|m| m.to_string()));
    for (currency, (paid, shadow)) in &c.totals {
        currency_section(&mut h, c, *currency, paid, shadow, &labels, top)?;
    }
    h.push_str("</body></html>\n");
    Ok(h)
}

fn figure(h: &mut String, class: &str, svg: &str) {
    let _ = writeln!(h, "<figure class=\"chart {class}\">{svg}</figure>");
}

fn diff_cell(v: i64) -> String {
    let class = if v < 0 {
        "n neg"
    } else if v > 0 {
        "n pos"
    } else {
        "n"
    };
    let v = if v > 0 { format!("+{v}") } else { v.to_string() };
    format!("<td class=\"{class}\">{v}</td>")
}

fn currency_section(
    h: &mut String,
    c: &Comparison,
    currency: Currency,
    paid: &Amounts,
    shadow: &[Amounts],
    labels: &[String],
    top: usize,
) -> Result<(), String> {
    let cur = currency.as_str();
    let _ = writeln!(h, "<section id=\"{cur}\"><h2>{cur}</h2>");

    // Totals.
    h.push_str("<table class=\"totals\"><tr><th>model</th><th>commission</th><th>reversed</th><th>net</th><th>diff</th></tr>\n");
    for (label, a) in labels.iter().zip(std::iter::once(paid).chain(shadow)) {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>{}</tr>",
            esc(label),
            a.commission,
            a.reversed,
            a.net(),
            diff_cell(a.net().saturating_sub(paid.net()))
        );
    }
    h.push_str("</table>\n");
    let totals = Bars {
        title: &format!("Total net commission, {cur}"),
        categories: labels.to_vec(),
        series: vec![("net".into(), std::iter::once(paid).chain(shadow).map(Amounts::net).collect())],
        size: (640, 320),
    };
    figure(h, "totals", &bar_chart(&totals)?);

    // Top creators.
    let rows: Vec<&Row> = c.rows_of(currency).collect();
    let shown = if top == 0 { rows.len() } else { top.min(rows.len()) };
    let rows = &rows[..shown];
    let mut series = vec![(labels[0].clone(), rows.iter().map(|r| r.paid.net()).collect::<Vec<_>>())];
    for (i, label) in labels[1..].iter().enumerate() {
        series.push((label.clone(), rows.iter().map(|r| r.shadow[i].net()).collect()));
    }
    let creators = Bars {
        title: &format!("Top {shown} creators by paid, {cur}"),
        categories: rows.iter().map(|r| r.creator_id.clone()).collect(),
        series,
        size: (960, 400),
    };
    figure(h, "creators", &bar_chart(&creators)?);
    h.push_str("<table class=\"creators\"><tr><th>creator</th>");
    for (i, label) in labels.iter().enumerate() {
        let _ = write!(h, "<th>{}</th>", esc(label));
        if i > 0 {
            h.push_str("<th>diff</th>");
        }
    }
    h.push_str("</tr>\n");
    for r in rows {
        let _ = write!(h, "<tr><td>{}</td><td class=\"n\">{}</td>", esc(&r.creator_id), r.paid.net());
        for s in &r.shadow {
            let _ = write!(h, "<td class=\"n\">{}</td>{}", s.net(), diff_cell(s.net().saturating_sub(r.paid.net())));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");

    // Per day.
    if let Some(days) = c.days.get(&currency) {
        let per_day = Bars {
            title: &format!("Paid commissions and reversals per day of purchase, {cur}"),
            categories: days.keys().map(|&d| date(d)).collect(),
            series: vec![
                ("commissions".into(), days.values().map(|d| d.commission).collect()),
                ("reversals".into(), days.values().map(|d| d.reversed).collect()),
            ],
            size: (960, 360),
        };
        figure(h, "days", &bar_chart(&per_day)?);
    }

    // Locks and refunds.
    if c.locks_on {
        h.push_str(
            "<table class=\"locks\"><tr><th>model</th><th>commissions</th><th>locked</th>\
             <th>commission</th><th>reversed</th><th>locked amount</th><th>pending amount</th></tr>\n",
        );
        let all: Vec<&Amounts> = std::iter::once(paid).chain(shadow).collect();
        for (label, a) in labels.iter().zip(&all) {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                esc(label),
                a.commissions,
                a.locks,
                a.commission,
                a.reversed,
                a.locked,
                a.pending()
            );
        }
        h.push_str("</table>\n");
        let locks = Bars {
            title: &format!("Refund and lock state, {cur}"),
            categories: labels.to_vec(),
            series: vec![
                ("locked".into(), all.iter().map(|a| a.locked).collect()),
                ("pending".into(), all.iter().map(|a| a.pending()).collect()),
                ("reversed".into(), all.iter().map(|a| a.reversed).collect()),
            ],
            size: (760, 340),
        };
        figure(h, "locks", &bar_chart(&locks)?);
    }
    h.push_str("</section>\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_svg_with_one_bar_per_value_and_escaped_labels() {
        let b = Bars {
            title: "t",
            categories: vec!["<a&b>".into(), "c".into()],
            series: vec![("x".into(), vec![5, -3]), ("y".into(), vec![0, 7])],
            size: (400, 300),
        };
        let svg = bar_chart(&b).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(!svg.contains("<a&b>"), "labels are escaped");
        assert!(svg.contains("&lt;a&amp;b&gt;"), "{svg}");
    }

    #[test]
    fn the_page_loads_nothing_and_escapes_creator_ids() {
        let mut b = super::super::Builder::default();
        let line = r#"{"commission_id":"p:0:<c>","kind":"commission","order_id":"o","purchase_event_id":"p","item_index":0,"product_id":"x","quantity":1,"user_id":"u","creator_id":"<c>","model":"last_touch","weight":1,"total_weight":1,"touch_event_id":"t","touch_type":"click","touch_ts":0,"touch_count":1,"purchase_ts":0,"gross_minor":100,"share_minor":100,"rate_bps":1000,"rule_id":"default","commission_minor":10,"currency":"USD"}"#;
        b.add(serde_json::from_str(line).unwrap());
        let page = render(&b.finish(), 10).unwrap();
        assert!(page.contains("default-src 'none'"));
        assert!(!page.contains("<script"));
        assert!(!page.contains("src=") && !page.contains("href="), "nothing to fetch");
        assert!(!page.contains("<c>"));
        assert_eq!(page.matches("<svg").count(), 3, "totals, creators, days");
    }
}
