package client

// Waiting is how many calls wait for a Batch slot, so tests know calls are queued.
func (b *Batcher) Waiting() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queue)
}
