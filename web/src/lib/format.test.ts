import { describe, expect, it } from 'vitest'
import {
  formatCost,
  formatCount,
  formatMs,
  formatRate,
  formatTime,
  formatTokens,
  limitLabel,
  maskSecret,
} from './format'

describe('formatting', () => {
  it('counts', () => {
    expect(formatCount(null)).toBe('—')
    expect(formatCount(0)).toBe('0')
    expect(formatCount(9999)).toBe('9,999')
    expect(formatCount(12_345)).toBe('12.3k')
    expect(formatCount(250_000)).toBe('250k')
    expect(formatCount(1_500_000)).toBe('1.5M')
    expect(formatCount(2_000_000_000)).toBe('2B')
  })

  it('costs keep the digits a small figure needs', () => {
    expect(formatCost(undefined)).toBe('—')
    expect(formatCost(0)).toBe('$0')
    expect(formatCost(0.000015)).toBe('$0.000015')
    expect(formatCost(0.0123)).toBe('$0.0123')
    expect(formatCost(3.5)).toBe('$3.50')
    expect(formatCost(1234.4)).toBe('$1234')
  })

  it('durations, rates and times', () => {
    expect(formatMs(null)).toBe('—')
    expect(formatMs(12.4)).toBe('12 ms')
    expect(formatMs(1500)).toBe('1.50 s')
    expect(formatMs(12_000)).toBe('12.0 s')
    expect(formatRate(null)).toBe('—')
    expect(formatRate(0)).toBe('0%')
    expect(formatRate(1)).toBe('100%')
    expect(formatRate(0.1234)).toBe('12.3%')
    expect(formatTime(null)).toBe('never')
    expect(formatTime('not a time')).toBe('not a time')
    expect(formatTime('2026-11-30T10:00:00Z')).toMatch(/2026/)
  })

  it('tokens and masked secrets', () => {
    expect(formatTokens(12, 30)).toBe('12 in · 30 out')
    expect(maskSecret('rg_abcdefghijklmnopqrstuvwxyz')).toBe('rg_abcde…wxyz')
    expect(maskSecret('short')).toBe('•••••')
  })
})

describe('limitLabel', () => {
  it('names a key limit and a tenant limit in words', () => {
    expect(limitLabel('requests_per_hour')).toBe('Requests this hour')
    expect(limitLabel('requests_per_month for tenant')).toBe('Requests this month (tenant)')
    expect(limitLabel('budget_per_month for tenant')).toBe('Budget this month (tenant)')
  })
  it('shows a rule it does not know as it is', () => {
    expect(limitLabel('gpu_minutes')).toBe('gpu_minutes')
    expect(limitLabel('gpu_minutes for tenant')).toBe('gpu_minutes (tenant)')
  })
})
