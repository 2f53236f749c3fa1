namespace KvSharp.Formats.Gguf;

/// <summary>Metadata value types of the GGUF format.</summary>
public enum GgufValueType : uint
{
    /// <summary>byte</summary>
    UInt8 = 0,
    /// <summary>sbyte</summary>
    Int8 = 1,
    /// <summary>ushort</summary>
    UInt16 = 2,
    /// <summary>short</summary>
    Int16 = 3,
    /// <summary>uint</summary>
    UInt32 = 4,
    /// <summary>int</summary>
    Int32 = 5,
    /// <summary>float</summary>
    Float32 = 6,
    /// <summary>bool (one byte)</summary>
    Bool = 7,
    /// <summary>UTF-8 string with a length prefix</summary>
    String = 8,
    /// <summary>typed array with a length prefix</summary>
    Array = 9,
    /// <summary>ulong</summary>
    UInt64 = 10,
    /// <summary>long</summary>
    Int64 = 11,
    /// <summary>double</summary>
    Float64 = 12,
}
