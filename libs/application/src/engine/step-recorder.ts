import { progressOf, type OperationStep } from '#domain';

/**
 * The steps of one operation run, written to Postgres in the background while the run goes
 * on: at most one write every `minIntervalMs` (steps marked meanwhile go in the next one),
 * never two at once, and none once the run ends, because the end state carries the final
 * list. A run shorter than the interval writes its steps only with its end. Each write
 * answers whether a cancel was asked for meanwhile.
 */
export class StepRecorder {
  private readonly steps: OperationStep[];
  private dirty = false;
  private closed = false;
  private writing: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private lastWriteAt: number;
  private error: unknown;
  cancelRequested: boolean;

  constructor(
    private readonly write: (steps: OperationStep[], progressPercent: number) => Promise<boolean>,
    initial: readonly OperationStep[],
    cancelRequested: boolean,
    private readonly minIntervalMs: number,
  ) {
    this.steps = initial.map((s) => ({ ...s }));
    this.cancelRequested = cancelRequested;
    this.lastWriteAt = Date.now();
  }

  /** A step done: the planned one of that name, or a new one. */
  mark(name: string): void {
    if (this.error) throw this.error;
    const planned = this.steps.find((s) => s.name === name && s.state === 'PENDING');
    if (planned) planned.state = 'DONE';
    else this.steps.push({ name, state: 'DONE' });
    this.dirty = true;
  }

  /** Writes what was marked, now or when the interval allows. */
  flush(): void {
    if (!this.dirty || this.closed || this.writing) return; // a write under way flushes again when it ends
    const wait = this.lastWriteAt + this.minIntervalMs - Date.now();
    if (wait > 0) {
      this.timer ??= setTimeout(() => {
        this.timer = undefined;
        this.flush();
      }, wait);
      return;
    }
    this.dirty = false;
    this.lastWriteAt = Date.now();
    const { steps, progressPercent } = this.current();
    this.writing = this.write(steps, progressPercent)
      .then(
        (cancel) => {
          if (cancel) this.cancelRequested = true;
        },
        (e: unknown) => {
          this.error ??= e;
        },
      )
      .finally(() => {
        this.writing = undefined;
        this.flush();
      });
  }

  /** The run is ending: no more writes; waits for the one under way and throws what a write failed with. */
  async settle(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    while (this.writing) await this.writing;
    if (this.error) throw this.error;
  }

  current(): { steps: OperationStep[]; progressPercent: number } {
    const steps = this.steps.map((s) => ({ ...s }));
    return { steps, progressPercent: progressOf(steps) };
  }
}
