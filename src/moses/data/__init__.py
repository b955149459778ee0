"""Task streams: the Task type, the embedded demo stream, and batching for training and generation."""

from moses.data.demo import demo_stream
from moses.data.stream import Example, Task

__all__ = ["Example", "Task", "demo_stream"]
