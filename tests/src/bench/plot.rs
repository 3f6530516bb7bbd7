//! The results as one PNG: cost per class, throughput per path, scale curves, Maglev builds.

use std::path::Path;

use anyhow::{Context as _, anyhow};
use plotters::{
    coord::Shift,
    prelude::*,
    style::{FontStyle, register_font},
};

use super::Results;

/// Text needs a TrueType font; Debian's `fonts-dejavu-core` (installed by `cargo xtask setup`).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn e<E: std::fmt::Debug>(x: E) -> anyhow::Error {
    anyhow!("plot: {x:?}")
}

/// Draws `r` into `path`.
///
/// # Errors
/// The font is missing or the PNG cannot be written.
pub fn draw(r: &Results, path: &Path) -> anyhow::Result<()> {
    let font: &'static [u8] = Box::leak(
        std::fs::read(FONT)
            .with_context(|| format!("{FONT} (apt install fonts-dejavu-core)"))?
            .into_boxed_slice(),
    );
    register_font("sans-serif", FontStyle::Normal, font).map_err(|_| anyhow!("bad font"))?;
    let root = BitMapBackend::new(path, (1400, 1000)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let areas = root.split_evenly((2, 2));
    let cost: Vec<(String, f64)> = r
        .cost
        .iter()
        .map(|c| (c.name.clone(), c.stats.p50_ns))
        .collect();
    bars(
        &areas[0],
        "Cost per packet, ns (p50, BPF_PROG_TEST_RUN)",
        &cost,
    )?;
    let tput: Vec<(String, f64)> = r
        .throughput
        .iter()
        .map(|t| (t.name.clone(), t.delivered_mpps))
        .collect();
    bars(
        &areas[1],
        "Throughput through the path, Mpps delivered",
        &tput,
    )?;
    scale(&areas[2], r)?;
    let maglev: Vec<(String, f64)> = r
        .control
        .maglev
        .iter()
        .map(|(n, s)| (format!("65537 slots × {n} backends"), s.p50_ns / 1e6))
        .collect();
    bars(&areas[3], "Maglev table build, ms (p50)", &maglev)?;
    root.present().map_err(e)?;
    Ok(())
}

/// Horizontal bars with their values.
fn bars(area: &Area<'_>, title: &str, rows: &[(String, f64)]) -> anyhow::Result<()> {
    let max = rows.iter().map(|r| r.1).fold(0.0, f64::max).max(1e-9) * 1.25;
    let n = rows.len().max(1);
    let labels: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(230)
        .build_cartesian_2d(0.0..max, 0.0..n as f64)
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n * 2 + 1)
        .y_label_formatter(&|y| {
            let f = y.fract();
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a row index"
            )]
            let i = *y as usize;
            if (f - 0.5).abs() < 0.01 && i < labels.len() {
                labels[labels.len() - 1 - i].clone()
            } else {
                String::new()
            }
        })
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    for (k, (_, v)) in rows.iter().enumerate() {
        #[expect(clippy::cast_precision_loss, reason = "a row index")]
        let y = (n - 1 - k) as f64;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, y + 0.15), (*v, y + 0.85)],
                Palette99::pick(k).filled(),
            )))
            .map_err(e)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{v:.3}"),
                (*v, y + 0.5),
                ("sans-serif", 13),
            )))
            .map_err(e)?;
    }
    Ok(())
}

/// The scale curves: cost (p50 ns) against size, log scale.
fn scale(area: &Area<'_>, r: &Results) -> anyhow::Result<()> {
    let ymax = r
        .scale
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.stats.p50_ns))
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.3;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Scale: ns per packet (p50) against size",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d((1f64..2e6f64).log_scale(), 0.0..ymax)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("services / backends / tracked flows / ACL rules")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    for (k, c) in r.scale.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        #[expect(clippy::cast_precision_loss, reason = "sizes far below 2^52")]
        let pts: Vec<(f64, f64)> = c
            .points
            .iter()
            .map(|p| (p.x.max(1) as f64, p.stats.p50_ns))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(e)?
            .label(format!("{} ({})", c.name, c.measures))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(e)?;
    Ok(())
}
