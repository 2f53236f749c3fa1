using System.Text;
using System.Text.Json;

namespace KvSharp.Tests.Formats;

/// <summary>Writes small safetensors files by hand (independent of the reader under test).</summary>
internal static class SafeTensorsFixture
{
    public sealed record Entry(string Name, string DType, long[] Shape, byte[] Data);

    /// <summary>Writes the entries contiguously; returns the file's bytes too.</summary>
    public static byte[] Write(string path, IEnumerable<Entry> entries, Func<string, string>? patchHeader = null)
    {
        var header = new Dictionary<string, object> { ["__metadata__"] = new Dictionary<string, string> { ["format"] = "pt" } };
        var data = new MemoryStream();
        foreach (var e in entries)
        {
            long begin = data.Length;
            data.Write(e.Data);
            header[e.Name] = new { dtype = e.DType, shape = e.Shape, data_offsets = new[] { begin, data.Length } };
        }
        string json = JsonSerializer.Serialize(header);
        if (patchHeader != null) json = patchHeader(json);
        var hb = Encoding.UTF8.GetBytes(json);
        var ms = new MemoryStream();
        ms.Write(BitConverter.GetBytes((ulong)hb.Length));
        ms.Write(hb);
        data.Position = 0;
        data.CopyTo(ms);
        var bytes = ms.ToArray();
        File.WriteAllBytes(path, bytes);
        return bytes;
    }

    public static byte[] F32(params float[] v)
    {
        var b = new byte[v.Length * 4];
        Buffer.BlockCopy(v, 0, b, 0, b.Length);
        return b;
    }
}
