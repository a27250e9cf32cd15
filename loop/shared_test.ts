import { test } from "node:test";
import assert from "node:assert/strict";
import {
  CTL, DEV, DEVICE_LAYOUT, Layout, MMIO_PAGES, mmioPage, queuePosWord, queueRunWord, SHARED_BYTES, SHARED_LAYOUT, VIRTIO_BLOCK_BYTES,
  VIRTIO_MAX_DEVICES, VIRTIO_MAX_QUEUES, virtioBlock,
} from "./shared.ts";
import { mmioStateWords, VIRTIO_MMIO_PAGE_SIZE } from "../devices/virtio/mmio.ts";
import { VIRTIO_MMIO_SIZE } from "../boot/layout.ts";

function noOverlap(regions: readonly { name: string; at: number; bytes: number }[], size: number): void {
  const sorted = [...regions].sort((a, b) => a.at - b.at);
  for (let i = 1; i < sorted.length; i++) {
    const a = sorted[i - 1], b = sorted[i];
    assert.ok(a.at + a.bytes <= b.at, `${a.name} runs into ${b.name}`);
  }
  const last = sorted[sorted.length - 1];
  assert.ok(last.at + last.bytes <= size, `${last.name} runs past the end`);
}

test("Layout carves aligned regions one after another", () => {
  const l = new Layout();
  assert.equal(l.region("a", 3, 1), 0);
  assert.equal(l.region("b", 8, 8), 8);
  assert.equal(l.region("c", 4, 4), 16);
  assert.equal(l.size, 20);
});

test("the shared block's regions do not overlap and fit in SHARED_BYTES, a whole number of pages", () => {
  noOverlap(SHARED_LAYOUT, SHARED_BYTES);
  assert.equal(SHARED_BYTES % 4096, 0);
  assert.ok(Math.max(...Object.values(CTL)) < SHARED_LAYOUT[1].at / 4, "a CTL word lies past the control region");
});

test("a device block holds the MMIO registers of its largest device, queue words, config and device words", () => {
  noOverlap(DEVICE_LAYOUT, VIRTIO_BLOCK_BYTES);
  assert.ok(DEV.QUEUE_RUN - DEV.MMIO >= mmioStateWords(VIRTIO_MAX_QUEUES) * 4);
  assert.equal(VIRTIO_BLOCK_BYTES % 64, 0);
  assert.equal(virtioBlock(VIRTIO_MAX_DEVICES - 1) + VIRTIO_BLOCK_BYTES <= SHARED_BYTES, true);
  assert.throws(() => virtioBlock(VIRTIO_MAX_DEVICES), RangeError);
  // Word indexes land inside their regions.
  const b = virtioBlock(3);
  assert.equal(queueRunWord(b, 0) * 4, b + DEV.QUEUE_RUN);
  assert.ok(queuePosWord(b, VIRTIO_MAX_QUEUES - 1) * 4 < b + DEV.CONFIG);
});

test("each device's register page is a whole page of its own, as large as its MMIO window, and nothing else shares it", () => {
  assert.equal(VIRTIO_MMIO_SIZE, VIRTIO_MMIO_PAGE_SIZE, "KVM maps the page over the whole window");
  assert.equal(MMIO_PAGES % 4096, 0);
  const pages = SHARED_LAYOUT.find((r) => r.at === MMIO_PAGES)!;
  assert.equal(pages.bytes, VIRTIO_MAX_DEVICES * VIRTIO_MMIO_PAGE_SIZE);
  // The guest may read these pages: no other region may start or end inside them.
  for (const r of SHARED_LAYOUT.filter((r) => r !== pages)) {
    assert.ok(r.at + r.bytes <= MMIO_PAGES || r.at >= MMIO_PAGES + pages.bytes, `${r.name} overlaps the register pages`);
  }
  assert.equal(mmioPage(VIRTIO_MAX_DEVICES - 1) + VIRTIO_MMIO_PAGE_SIZE <= SHARED_BYTES, true);
  assert.throws(() => mmioPage(VIRTIO_MAX_DEVICES), RangeError);
});
