namespace KvSharp.GpuTests.Checks;

/// <summary>A GPU check found a result outside its tolerance (or an element never written).</summary>
public sealed class CheckFailedException(string message) : Exception(message);
