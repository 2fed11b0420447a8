package client

// Waiting is how many calls wait for a Batch slot, so tests know calls are queued.
func (b *Batcher) Waiting() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queue)
}

// Outstanding is how many operations of the Session's current stream wait for an
// answer (sent, or waiting to be handed to its sender), so tests know they are queued.
func (s *Session) Outstanding() int {
	s.mu.Lock()
	st := s.stream
	s.mu.Unlock()
	return st.outstanding()
}
