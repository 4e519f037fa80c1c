//! The plot of `orders-bench --sweep-secs`: command -> queryable latency (p50
//! and p99) against offered rate, one colour per backend, written as SVG
//! beside the JSON results.

use super::sweep::Sweep;
use plotters::prelude::*;
use std::path::Path;

/// Latencies below this are drawn at it (log scale), in milliseconds.
const FLOOR_MS: f64 = 0.1;

/// One colour per backend, in the order they are benched.
const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

/// The points of one line: (offered rate, latency in ms), in sweep order
/// (the repeat at half the knee is drawn as a lone marker).
fn line(sweep: &Sweep, pick: fn(&super::sweep::SweepPoint) -> u64) -> Vec<(f64, f64)> {
    sweep
        .points
        .iter()
        .map(|p| (p.offered, (pick(p) as f64 / 1000.0).max(FLOOR_MS)))
        .collect()
}

/// The chart's coordinates: offered rate by latency, both log scale.
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<LogCoord<f64>, LogCoord<f64>>>;

/// The axes' ranges: (highest rate, lowest and highest latency in ms).
fn bounds(sweeps: &[(&str, &Sweep)]) -> (f64, f64, f64) {
    let all = sweeps
        .iter()
        .flat_map(|(_, s)| s.points.iter().chain(s.half_knee.iter()));
    let (mut max_rate, mut min_ms, mut max_ms) = (1000.0f64, 1.0f64, 100.0f64);
    for p in all {
        max_rate = max_rate.max(p.offered * 1.5);
        max_ms = max_ms.max(p.command_to_queryable_us.max as f64 / 1000.0 * 2.0);
        min_ms = min_ms.min(p.command_to_queryable_us.p50 as f64 / 1000.0 / 2.0);
    }
    (max_rate, min_ms.max(FLOOR_MS), max_ms)
}

/// Writes the SVG of `sweeps` (backend name, its sweep) to `file`.
pub fn write(file: &Path, sweeps: &[(&str, &Sweep)]) -> anyhow::Result<()> {
    let (max_rate, min_ms, max_ms) = bounds(sweeps);
    let root = SVGBackend::new(file, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "command -> queryable latency against offered rate (open loop)",
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((100f64..max_rate).log_scale(), (min_ms..max_ms).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("offered rate, commands/s (log); x: the repeat at half the knee")
        .y_desc("latency, ms (log)")
        .light_line_style(WHITE)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v}"))
        .draw()?;
    for (i, (backend, sweep)) in sweeps.iter().enumerate() {
        draw_backend(&mut chart, COLOURS[i % COLOURS.len()], backend, sweep)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// One backend: p50 as a solid line, p99 dashed, half the knee as crosses.
fn draw_backend(
    chart: &mut Chart<'_, '_>,
    colour: RGBColor,
    backend: &str,
    sweep: &Sweep,
) -> anyhow::Result<()> {
    let p50 = line(sweep, |p| p.command_to_queryable_us.p50);
    let p99 = line(sweep, |p| p.command_to_queryable_us.p99);
    let knee = sweep
        .knee
        .map_or("no knee".to_owned(), |k| format!("knee {k:.0}/s"));
    let legend = move |width: u32| {
        move |(x, y): (i32, i32)| {
            PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(width))
        }
    };
    chart
        .draw_series(LineSeries::new(p50.clone(), colour.stroke_width(2)))?
        .label(format!("{backend} p50 ({knee})"))
        .legend(legend(2));
    chart.draw_series(p50.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
    chart
        .draw_series(DashedLineSeries::new(
            p99.clone(),
            6,
            4,
            colour.stroke_width(1),
        ))?
        .label(format!("{backend} p99"))
        .legend(legend(1));
    chart.draw_series(
        p99.iter()
            .map(|&p| TriangleMarker::new(p, 4, colour.filled())),
    )?;
    if let Some(h) = &sweep.half_knee {
        let at = |us: u64| (h.offered, (us as f64 / 1000.0).max(FLOOR_MS));
        chart.draw_series([
            Cross::new(at(h.command_to_queryable_us.p50), 6, colour.stroke_width(2)),
            Cross::new(at(h.command_to_queryable_us.p99), 6, colour.stroke_width(2)),
        ])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Percentiles;
    use crate::sweep::SweepPoint;

    fn point(offered: f64, p50_ms: u64) -> SweepPoint {
        let p = |ms: u64| Percentiles {
            p50: ms * 1000,
            p99: ms * 3000,
            p999: ms * 4000,
            max: ms * 5000,
        };
        SweepPoint {
            offered,
            achieved: offered,
            command_us: p(1),
            command_to_queryable_us: p(p50_ms),
            errors: 0,
            first_error: None,
        }
    }

    #[test]
    fn the_plot_names_every_backend_and_its_knee() {
        let sweep = |knee: f64| Sweep {
            points: vec![point(250.0, 2), point(500.0, 3), point(1000.0, 400)],
            knee: Some(knee),
            half_knee: Some(point(knee / 2.0, 2)),
        };
        let (a, b) = (sweep(500.0), sweep(1000.0));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sweep.svg");
        write(&file, &[("sqlite (embedded)", &a), ("postgresql", &b)]).unwrap();
        let svg = std::fs::read_to_string(&file).unwrap();
        assert!(
            svg.starts_with("<svg"),
            "not an SVG: {}",
            &svg[..40.min(svg.len())]
        );
        assert!(svg.contains("sqlite (embedded) p50 (knee 500/s)"), "{svg}");
        assert!(svg.contains("postgresql p50 (knee 1000/s)"), "{svg}");
        assert!(svg.contains("postgresql p99"), "{svg}");
        assert!(svg.contains("<polyline"), "no lines drawn");
    }
}
