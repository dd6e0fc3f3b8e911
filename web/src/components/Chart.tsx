/** A time-series chart (uPlot): a few lines over time, with a text table for screen readers. */

import { useEffect, useRef } from 'react'
import uPlot from 'uplot'
import 'uplot/dist/uPlot.min.css'

export interface Series {
  label: string
  values: (number | null)[]
  color: string
}

export function TimeChart({
  title,
  times,
  series,
  format,
  xRange,
}: {
  title: string
  /** The time range shown, in seconds since the epoch (the data may cover less of it). */
  xRange?: [number, number]
  /** Seconds since the epoch. */
  times: number[]
  series: Series[]
  format: (v: number | null) => string
}) {
  const box = useRef<HTMLDivElement>(null)
  useEffect(() => {
    const element = box.current
    if (!element || times.length === 0) return
    // The figure's width, not the box's: the box holds a canvas of the previous width.
    const holder = element.parentElement ?? element
    const width = () => Math.max(holder.clientWidth - 24, 160)
    const plot = new uPlot(
      {
        width: width(),
        height: 180,
        legend: { show: true },
        cursor: { drag: { x: false, y: false } },
        scales: { x: xRange ? { time: true, range: () => xRange } : { time: true } },
        axes: [
          { stroke: 'currentColor', grid: { stroke: 'rgba(128,128,128,0.15)' } },
          {
            stroke: 'currentColor',
            grid: { stroke: 'rgba(128,128,128,0.15)' },
            size: 60,
            values: (_u, ticks) => ticks.map((t) => format(t)),
          },
        ],
        series: [
          {},
          ...series.map((s) => ({
            label: s.label,
            stroke: s.color,
            width: 2,
            points: { show: times.length < 40 },
            value: (_u: uPlot, v: number | null) => format(v),
          })),
        ],
      },
      [times, ...series.map((s) => s.values)] as uPlot.AlignedData,
      element,
    )
    const observer = new ResizeObserver(() => plot.setSize({ width: width(), height: 180 }))
    observer.observe(holder)
    return () => {
      observer.disconnect()
      plot.destroy()
    }
  }, [times, series, format, xRange])
  return (
    <figure className="chart">
      <figcaption>{title}</figcaption>
      {times.length === 0 ? (
        <p className="muted">No data in this range.</p>
      ) : (
        <div ref={box} className="plot" aria-hidden="true" />
      )}
      {times.length > 0 ? (
        <div className="sr-only">
          <table>
            <caption>{title}</caption>
            <thead>
              <tr>
                <th>Time</th>
                {series.map((s) => (
                  <th key={s.label}>{s.label}</th>
                ))}
              </tr>
            </thead>
            <tbody>
              {times.map((t, i) => (
                <tr key={t}>
                  <td>{new Date(t * 1000).toISOString()}</td>
                  {series.map((s) => (
                    <td key={s.label}>{format(s.values[i] ?? null)}</td>
                  ))}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
    </figure>
  )
}
