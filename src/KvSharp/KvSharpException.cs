namespace KvSharp;

/// <summary>
/// An error caused by the user's input (a model file, an option, a prompt) rather than by a bug.
/// The CLI prints <see cref="Exception.Message"/> alone, without a stack trace, and exits non-zero;
/// messages therefore name the file or option and the problem.
/// </summary>
public class KvSharpException : Exception
{
    /// <summary>Creates an input error with a message that names the problem.</summary>
    public KvSharpException(string message) : base(message) { }

    /// <summary>Creates an input error wrapping the low-level cause.</summary>
    public KvSharpException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>A model file that cannot be read: truncated, corrupt, or of an unsupported kind.</summary>
public sealed class ModelFormatException : KvSharpException
{
    /// <summary>Creates an error naming <paramref name="path"/> and the problem.</summary>
    public ModelFormatException(string path, string problem) : base($"{path}: {problem}") { Path = path; }

    /// <summary>The file that could not be read.</summary>
    public string Path { get; }
}
